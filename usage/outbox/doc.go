// Package outbox holds the durable stores of usage events waiting for
// export, two implementations of usage.Outbox:
//
//   - File, an embedded bbolt database on local disk, for one replica. It
//     needs nothing else. Append returns after bbolt's commit, which writes
//     and fsyncs the file; concurrent Appends share one commit (a writer
//     goroutine takes every Append queued while the previous commit synced),
//     so many settlements at once pay one fsync, and a lone Append waits for
//     no timer. One process holds the file at a time (an flock): a second
//     one fails at open, naming the path, instead of waiting.
//   - Redis, a Redis stream read through a consumer group, for replicas
//     sharing Redis. Each waiting event is handed to one consumer at a time,
//     and claimed by another when its consumer stops reading for ClaimIdle.
//
// Both store an event once per ID: an ID that is waiting is not stored
// again, nor one acknowledged less than DedupWindow ago (a retried Append,
// or two replicas settling the same request). Past the window an ID is
// stored again and exported again; the provider's own de-duplication by
// the event's ID is the backstop. Both are bounded by MaxEvents: an Append
// that would pass the bound stores none of its events and returns an error
// matching usage.ErrFull (events already waiting count toward nothing: a
// batch of duplicates is accepted when full).
//
// An Append that returns nil has stored its events; one that returns an
// error may or may not have (a commit or script under way when the context
// ended), and retrying it is safe.
//
// Costs: File's Append is one commit (two fsyncs, shared by the Appends
// grouped in it), Pending and Stats one read transaction each, with no
// scan (the backlog is a counter kept in the same transactions). OpenFile
// checks the whole file (bbolt's consistency check and the outbox's own
// counters), which reads every page once: about 0.3 s for 200,000 waiting
// events (86 MB) on a 2-core VM. An event takes about 450 bytes of disk;
// the file does not shrink when the backlog drains, its free pages are
// reused. bbolt checksums only its meta pages: a damaged page structure is
// refused at open, a damaged byte inside an event's JSON is an ErrCorrupt
// from Pending. Redis's Append, Ack and Stats are one round trip each;
// Pending is three or more (own pending list, XAUTOCLAIM, new entries).
//
// Every method of both is safe for concurrent use.
package outbox
