package authz

// LenientUnmarshal is lenientUnmarshal, the reference the tests hold the
// wire decoder to.
var LenientUnmarshal = lenientUnmarshal
