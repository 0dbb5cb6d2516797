package x402

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestMatch(t *testing.T) {
	key := testKey(t, 1)
	offer := testOffer()
	topUp := testOffer()
	topUp.Amount = "5000000"
	offers := []PaymentRequirements{offer, topUp}
	tests := []struct {
		name string
		p    func() PaymentPayload
		now  time.Time
		want error
	}{
		{"valid", func() PaymentPayload { return signedPayload(t, key, offer, 1, nil) }, testNow, nil},
		{"second offer", func() PaymentPayload { return signedPayload(t, key, topUp, 1, nil) }, testNow, nil},
		{"payTo checksum case differs", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, nil)
			p.Accepted.PayTo = "0x209693bc6afc0c5328ba36faf03c514ef312287c"
			return p
		}, testNow, nil},
		{"tampered accepted amount", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, func(a *Authorization) { a.Value = "1" })
			p.Accepted.Amount = "1"
			return p
		}, testNow, ErrValueMismatch},
		{"tampered authorization value", func() PaymentPayload {
			return signedPayload(t, key, offer, 1, func(a *Authorization) { a.Value = "9999" })
		}, testNow, ErrValueMismatch},
		{"tampered accepted payTo", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, func(a *Authorization) { a.To = testOther })
			p.Accepted.PayTo = testOther
			return p
		}, testNow, ErrRecipientMismatch},
		{"tampered authorization to", func() PaymentPayload {
			return signedPayload(t, key, offer, 1, func(a *Authorization) { a.To = testOther })
		}, testNow, ErrRecipientMismatch},
		{"other asset", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, nil)
			p.Accepted.Asset = testOther
			return p
		}, testNow, ErrNoMatchingOffer},
		{"other network", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, nil)
			p.Accepted.Network = "eip155:8453"
			return p
		}, testNow, ErrInvalidNetwork},
		{"other EIP-712 domain", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, nil)
			p.Accepted.Extra.Name = "USD Coin"
			return p
		}, testNow, ErrNoMatchingOffer},
		{"longer maxTimeoutSeconds", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, nil)
			p.Accepted.MaxTimeoutSeconds = 3600
			return p
		}, testNow, ErrNoMatchingOffer},
		{"expired", func() PaymentPayload { return signedPayload(t, key, offer, 1, nil) }, testNow.Add(60 * time.Second), ErrExpired},
		{"last valid second", func() PaymentPayload { return signedPayload(t, key, offer, 1, nil) }, testNow.Add(59 * time.Second), nil},
		{"not yet valid", func() PaymentPayload {
			return signedPayload(t, key, offer, 1, func(a *Authorization) { a.ValidAfter = fmt.Sprint(testNow.Unix() + 1) })
		}, testNow, ErrNotYetValid},
		{"valid from now", func() PaymentPayload {
			return signedPayload(t, key, offer, 1, func(a *Authorization) { a.ValidAfter = fmt.Sprint(testNow.Unix()) })
		}, testNow, nil},
		{"validity beyond maxTimeout and skew", func() PaymentPayload {
			return signedPayload(t, key, offer, 1, func(a *Authorization) { a.ValidBefore = fmt.Sprint(testNow.Unix() + 60 + 31) })
		}, testNow, ErrValidityTooLong},
		{"validity within skew", func() PaymentPayload {
			return signedPayload(t, key, offer, 1, func(a *Authorization) { a.ValidBefore = fmt.Sprint(testNow.Unix() + 60 + 30) })
		}, testNow, nil},
		{"validBefore beyond int64", func() PaymentPayload {
			return signedPayload(t, key, offer, 1, func(a *Authorization) { a.ValidBefore = "99999999999999999999999" })
		}, testNow, ErrValidityTooLong},
		{"v1 payload", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, nil)
			p.X402Version, p.Accepted, p.Resource, p.Scheme, p.Network = VersionV1, nil, nil, SchemeExact, "base-sepolia"
			return p
		}, testNow, nil},
		{"v1 payload, tampered value", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, func(a *Authorization) { a.Value = "1" })
			p.X402Version, p.Accepted, p.Resource, p.Scheme, p.Network = VersionV1, nil, nil, SchemeExact, "base-sepolia"
			return p
		}, testNow, ErrValueMismatch},
		{"v1 payload, tampered to", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, func(a *Authorization) { a.To = testOther })
			p.X402Version, p.Accepted, p.Resource, p.Scheme, p.Network = VersionV1, nil, nil, SchemeExact, "base-sepolia"
			return p
		}, testNow, ErrRecipientMismatch},
		{"v1 payload, other chain", func() PaymentPayload {
			p := signedPayload(t, key, offer, 1, nil)
			p.X402Version, p.Accepted, p.Resource, p.Scheme, p.Network = VersionV1, nil, nil, SchemeExact, "base"
			return p
		}, testNow, ErrInvalidNetwork},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.p()
			got, err := Match(offers, p, tt.now)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				if !sameOffer(got, offers[0]) && !sameOffer(got, offers[1]) {
					t.Errorf("matched %+v, not an offer", got)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}
