package x402

import (
	"encoding/hex"
	"math/big"
	"strings"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"golang.org/x/crypto/sha3"
)

// keccak256 is Ethereum's hash (the original Keccak padding, not FIPS SHA3-256).
func keccak256(parts ...[]byte) [32]byte {
	h := sha3.NewLegacyKeccak256()
	for _, p := range parts {
		h.Write(p)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

var (
	eip712DomainType = keccak256([]byte("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"))
	transferAuthType = keccak256([]byte("TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"))
	// secp256k1 group order / 2: signatures with a larger s are refused, as
	// USDC's and OpenZeppelin's ecrecover wrappers refuse them on chain.
	halfOrder = new(big.Int).Rsh(secp256k1.S256().N, 1)
)

// Domain is the EIP-712 domain of an EIP-3009 token.
type Domain struct {
	Name              string // extra.name, e.g. "USDC"
	Version           string // extra.version, e.g. "2"
	ChainID           uint64 // from the CAIP-2 network
	VerifyingContract string // the asset (token contract) address
}

// DomainOf builds the EIP-712 domain from requirements we offered.
func DomainOf(r PaymentRequirements) (Domain, error) {
	id, err := chainIDOf(r.Network, false)
	if err != nil {
		return Domain{}, err
	}
	if r.Extra.Name == "" || r.Extra.Version == "" {
		return Domain{}, invalid("extra", "EIP-712 domain name and version are required")
	}
	if !isAddress(r.Asset) {
		return Domain{}, invalid("asset", "want an address")
	}
	return Domain{Name: r.Extra.Name, Version: r.Extra.Version, ChainID: id, VerifyingContract: r.Asset}, nil
}

func word(n *big.Int) []byte {
	var w [32]byte
	n.FillBytes(w[:])
	return w[:]
}

func addressWord(a string) []byte {
	b, _ := decodeHex(a, 20)
	var w [32]byte
	copy(w[12:], b)
	return w[:]
}

func (d Domain) separator() [32]byte {
	name := keccak256([]byte(d.Name))
	version := keccak256([]byte(d.Version))
	return keccak256(eip712DomainType[:], name[:], version[:],
		word(new(big.Int).SetUint64(d.ChainID)), addressWord(d.VerifyingContract))
}

// TypedDataHash is the EIP-712 digest a wallet signs for an EIP-3009
// TransferWithAuthorization: keccak256(0x1901 ‖ domainSeparator ‖ structHash).
// The authorization must have passed validation (see DecodePaymentSignature).
func TypedDataHash(d Domain, a Authorization) ([32]byte, error) {
	nums := make([][]byte, 3)
	for i, s := range []string{a.Value, a.ValidAfter, a.ValidBefore} {
		n, ok := parseUint256(s)
		if !ok {
			return [32]byte{}, invalid("payload.authorization", "numbers must be decimal uint256")
		}
		nums[i] = word(n)
	}
	nonce, ok := decodeHex(a.Nonce, 32)
	if !ok || !isAddress(a.From) || !isAddress(a.To) || !isAddress(d.VerifyingContract) {
		return [32]byte{}, invalid("payload.authorization", "malformed")
	}
	structHash := keccak256(transferAuthType[:], addressWord(a.From), addressWord(a.To),
		nums[0], nums[1], nums[2], nonce)
	sep := d.separator()
	return keccak256([]byte{0x19, 0x01}, sep[:], structHash[:]), nil
}

// RecoverSigner returns the address (lower case) whose key made the 65-byte
// signature r ‖ s ‖ v over digest. v may be 27/28 or 0/1; high-s is refused.
func RecoverSigner(digest [32]byte, signature string) (string, error) {
	sig, ok := decodeHex(signature, 65)
	if !ok {
		return "", &Error{Reason: ReasonInvalidSignature, Field: "payload.signature", Detail: "want 65 bytes"}
	}
	v := sig[64]
	if v < 27 {
		v += 27
	}
	if v != 27 && v != 28 {
		return "", &Error{Reason: ReasonInvalidSignature, Field: "payload.signature", Detail: "recovery id must be 27, 28, 0 or 1"}
	}
	if new(big.Int).SetBytes(sig[32:64]).Cmp(halfOrder) > 0 {
		return "", &Error{Reason: ReasonInvalidSignature, Field: "payload.signature", Detail: "s is in the upper half of the curve order"}
	}
	compact := make([]byte, 65)
	compact[0] = v // decred's compact form: recovery code first, uncompressed key
	copy(compact[1:], sig[:64])
	pub, _, err := ecdsa.RecoverCompact(compact, digest[:])
	if err != nil {
		return "", &Error{Reason: ReasonInvalidSignature, Field: "payload.signature", Detail: "no public key recovers from it"}
	}
	return addressOf(pub), nil
}

// addressOf is the Ethereum address of a public key, lower case.
func addressOf(pub *secp256k1.PublicKey) string {
	h := keccak256(pub.SerializeUncompressed()[1:])
	return "0x" + hex.EncodeToString(h[12:])
}

// AddressOfKey returns the Ethereum address (EIP-55) of a private key.
func AddressOfKey(key *secp256k1.PrivateKey) string {
	return ChecksumAddress(addressOf(key.PubKey()))
}

// ChecksumAddress returns the EIP-55 mixed-case form of a 0x address.
func ChecksumAddress(a string) string {
	lower := strings.ToLower(a[2:])
	h := keccak256([]byte(lower))
	out := []byte("0x" + lower)
	for i := 0; i < 40; i++ {
		c := lower[i]
		nibble := h[i/2] >> 4
		if i%2 == 1 {
			nibble = h[i/2] & 0x0f
		}
		if c >= 'a' && c <= 'f' && nibble >= 8 {
			out[2+i] = c - 'a' + 'A'
		}
	}
	return string(out)
}

// VerifySignature checks that p's EIP-3009 authorization was signed by its
// `from` under the EIP-712 domain of the requirements we offered (never the
// client's copy of them). It returns the payer's address.
func VerifySignature(req PaymentRequirements, p PaymentPayload) (string, error) {
	d, err := DomainOf(req)
	if err != nil {
		return "", err
	}
	digest, err := TypedDataHash(d, p.Payload.Authorization)
	if err != nil {
		return "", err
	}
	signer, err := RecoverSigner(digest, p.Payload.Signature)
	if err != nil {
		return "", err
	}
	if !sameAddress(signer, p.Payload.Authorization.From) {
		return "", &Error{Reason: ReasonInvalidSignature, Field: "payload.signature", Detail: "not signed by authorization.from"}
	}
	return ChecksumAddress(signer), nil
}

// SignAuthorization signs a with key under d and returns the 65-byte
// signature r ‖ s ‖ v (v = 27/28) as 0x hex, as a wallet would. It exists for
// tests and tools that play the paying client.
func SignAuthorization(key *secp256k1.PrivateKey, d Domain, a Authorization) (string, error) {
	digest, err := TypedDataHash(d, a)
	if err != nil {
		return "", err
	}
	compact := ecdsa.SignCompact(key, digest[:], false) // [27+recid] ‖ r ‖ s, low s
	sig := make([]byte, 65)
	copy(sig, compact[1:])
	sig[64] = compact[0]
	return "0x" + hex.EncodeToString(sig), nil
}
