package authz

import (
	"errors"
	"sync"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// Codec is the gRPC codec for a server that answers Check: the standard
// protobuf codec, made faster for the Check request and response.
//
//   - Into a *Request (Register's handler), a CheckRequest is decoded
//     without building the message: only what a decision reads is kept,
//     as substrings of one copy of the bytes (decode_request.go). A decision reads
//     there what it would read in the message proto.Unmarshal gives.
//   - Into a *authv3.CheckRequest (authv3.RegisterAuthorizationServer's
//     handler), proto.Unmarshal decodes it.
//   - Either way, invalid UTF-8 in a string (a header value, the path) is
//     no error: each run of invalid bytes reads as U+FFFD, and the request
//     gets a decision. Only bytes that are not a CheckRequest at all are an
//     error, which Register's handler answers with INVALID_ARGUMENT (the
//     generated handler's is grpc-go's INTERNAL).
//   - Every other message goes to the standard codec.
//   - A response with vtprotobuf's marshalling methods is encoded by them.
//     go-control-plane generates those methods behind the build tag
//     vtprotobuf: build with -tags vtprotobuf to use them. Without the tag,
//     responses are encoded by the protobuf runtime, as usual.
//
// Every other message goes to the standard codec, so the codec is safe to
// install for a whole server (grpc.ForceServerCodecV2), health service
// included. Its name is "proto", like the codec it stands in for.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

// std is grpc-go's own protobuf codec.
var std = func() encoding.CodecV2 {
	c := encoding.GetCodecV2(grpcproto.Name)
	if c == nil {
		panic("authz: grpc's proto codec is not registered")
	}
	return c
}()

// Name implements encoding.CodecV2.
func (Codec) Name() string { return grpcproto.Name }

// vtMarshaler is what vtprotobuf generates for a message.
type vtMarshaler interface {
	SizeVT() int
	MarshalToSizedBufferVTStrict(dAtA []byte) (int, error)
}

// Marshal implements encoding.CodecV2. An *Encoded is sent as it is.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(*Encoded); ok {
		return e.take()
	}
	m, ok := v.(vtMarshaler)
	if !ok {
		return std.Marshal(v)
	}
	b, err := marshalVT(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{b}, nil
}

// marshalVT encodes m into a buffer of its own: a pooled one, freed by
// grpc-go once written, for a message of 1 KiB or more (grpc-go pools no
// smaller buffer).
func marshalVT(m vtMarshaler) (mem.Buffer, error) {
	size := m.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalToSizedBufferVTStrict(buf); err != nil {
			return nil, err
		}
		return mem.SliceBuffer(buf), nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := m.MarshalToSizedBufferVTStrict((*buf)[:size]); err != nil {
		pool.Put(buf)
		return nil, err
	}
	return mem.NewBuffer(buf, pool), nil
}

// Encoded is a Check's answer in protobuf's wire form: what Register's
// handler returns, so that the messages it was built from can be reused at
// once (see Server.serve). Codec sends its bytes; it can be sent once.
// Bytes reads them, for tests and interceptors.
type Encoded struct {
	one  [1]mem.Buffer // bufs' array when the answer is one buffer
	bufs mem.BufferSlice
	sent bool
}

// encode encodes resp into an Encoded.
func encode(resp *authv3.CheckResponse) (*Encoded, error) {
	e := new(Encoded)
	if m, ok := any(resp).(vtMarshaler); ok {
		b, err := marshalVT(m)
		if err != nil {
			return nil, status.Error(codes.Internal, "tollgate: encoding the answer: "+err.Error())
		}
		e.one[0] = b
		e.bufs = e.one[:]
		return e, nil
	}
	bufs, err := std.Marshal(resp)
	if err != nil {
		return nil, status.Error(codes.Internal, "tollgate: encoding the answer: "+err.Error())
	}
	e.bufs = bufs
	return e, nil
}

// take hands the bytes over to grpc-go, which frees them once written.
func (e *Encoded) take() (mem.BufferSlice, error) {
	if e.sent {
		return nil, errors.New("tollgate: an encoded answer is sent once")
	}
	e.sent = true
	return e.bufs, nil
}

// Bytes returns a copy of the encoded answer, or nil once it was sent.
func (e *Encoded) Bytes() []byte {
	if e.sent {
		return nil
	}
	return e.bufs.Materialize()
}

// Unmarshal implements encoding.CodecV2.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	// The error, if any, is proto.Unmarshal's, as with the standard codec.
	switch m := v.(type) {
	case *Request:
		return m.decodeFrom(data)
	case *checkInput:
		m.err = m.q.decodeFrom(data)
		return nil // see checkInput
	case *authv3.CheckRequest:
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		return lenientUnmarshal(buf.ReadOnlyData(), m)
	}
	return std.Unmarshal(data, v)
}

// decodeFrom decodes data, as grpc-go hands it over, into q.
func (q *Request) decodeFrom(data mem.BufferSlice) error {
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return q.decode(buf.ReadOnlyData())
}

// checkInput is what Register's handler decodes into: the Request, and
// the error when the bytes are not a CheckRequest. The codec keeps that
// error here and returns none: grpc-go would answer any codec error with
// INTERNAL at once, and the handler answers INVALID_ARGUMENT instead, since
// the fault is the client's.
type checkInput struct {
	q   *Request
	err error
}

// inputs pools checkInputs: one made per Check would be one more
// allocation on the hot path.
var inputs = sync.Pool{New: func() any { return new(checkInput) }}

// decodeCheck decodes a Check into q with dec, grpc-go's decoding function
// for Register's handler. Its error is dec's, or INVALID_ARGUMENT when the
// bytes are not a CheckRequest.
func decodeCheck(dec func(any) error, q *Request) error {
	in := inputs.Get().(*checkInput)
	in.q = q
	err := dec(in)
	if err == nil && in.err != nil {
		err = status.Error(codes.InvalidArgument, "tollgate: the request is not a CheckRequest: "+in.err.Error())
	}
	*in = checkInput{}
	inputs.Put(in)
	return err
}
