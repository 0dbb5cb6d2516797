package authz

import (
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Codec is the gRPC codec for a server that answers Check: the standard
// protobuf codec, made faster for the Check request and response.
//
//   - Into a *Request (Register's handler), a CheckRequest is decoded
//     without building the message: only what a decision reads is kept,
//     as substrings of one copy of the bytes (wire.go). A decision reads
//     there what it would read in the message proto.Unmarshal gives, and
//     an error is proto.Unmarshal's.
//   - Into a *authv3.CheckRequest (authv3.RegisterAuthorizationServer's
//     handler), as every other message, the standard codec decodes it.
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

// Marshal implements encoding.CodecV2.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(vtMarshaler)
	if !ok {
		return std.Marshal(v)
	}
	size := m.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalToSizedBufferVTStrict(buf); err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := m.MarshalToSizedBufferVTStrict((*buf)[:size]); err != nil {
		pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// Unmarshal implements encoding.CodecV2.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	// Either way the error, if any, is proto.Unmarshal's, as with the
	// standard codec.
	switch m := v.(type) {
	case *Request:
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		return m.decode(buf.ReadOnlyData())
	}
	return std.Unmarshal(data, v)
}
