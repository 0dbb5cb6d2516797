// Package policy owns plans, routes and the decision codes. A Spec from the
// config file is compiled once into a Policy; Match and Decide then only look
// things up: no I/O, no clock reads (the caller passes now), no allocation on
// the allow path.
//
// Routes are tried in the order written and the first match wins. With more
// than a few routes, Compile also builds an index by each route's literal
// path start, so that Match tries only the routes a path can match (a
// thousand routes cost about what ten do). A Policy is immutable after
// Compile and safe for concurrent use; a reload compiles a new one and
// swaps it in.
package policy
