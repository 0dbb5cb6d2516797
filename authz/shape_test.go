package authz

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestShapeOf(t *testing.T) {
	seen := map[protoreflect.FullName]*shape{}
	field := func(m protoreflect.MessageDescriptor, num protowire.Number) fieldShape {
		return shapeOf(m, seen).fields[num]
	}
	str := (*structpb.Struct)(nil).ProtoReflect().Descriptor()
	value := (*structpb.Value)(nil).ProtoReflect().Descriptor()
	http := (*authv3.AttributeContext_HttpRequest)(nil).ProtoReflect().Descriptor()
	tests := []struct {
		name string
		got  fieldShape
		want fieldShape
	}{
		{"a string", field(http, 1), fieldShape{known: true, typ: protowire.BytesType, utf8: true}},
		{"an int64", field(http, 9), fieldShape{known: true, typ: protowire.VarintType}},
		{"bytes", field(http, 12), fieldShape{known: true, typ: protowire.BytesType}},
		{"not a field", field(http, 0), fieldShape{}},
		{"a double", field(value, 2), fieldShape{known: true, typ: protowire.Fixed64Type}},
		{"a message", field(value, 5), fieldShape{known: true, typ: protowire.BytesType, msg: shapeOf(str, seen)}},
		{"a map entry's key", field(str, 1).msg.fields[1], fieldShape{known: true, typ: protowire.BytesType, utf8: true}},
		{"a map entry's value", field(str, 1).msg.fields[2], fieldShape{known: true, typ: protowire.BytesType, msg: shapeOf(value, seen)}},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, tt.got, tt.want)
		}
	}
	for _, m := range []struct {
		md   protoreflect.MessageDescriptor
		slow bool
	}{
		{(*authv3.CheckRequest)(nil).ProtoReflect().Descriptor(), false},
		{str, false},
		{(*descriptorpb.FileOptions)(nil).ProtoReflect().Descriptor(), true}, // proto2, extendable
	} {
		if got := shapeOf(m.md, seen).slow; got != m.slow {
			t.Errorf("%s: slow = %v, want %v", m.md.FullName(), got, m.slow)
		}
	}
	for name, s := range shapes {
		if s.slow {
			t.Errorf("%s, in a CheckRequest, is skipped by the runtime", name)
		}
	}
}
