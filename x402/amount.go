package x402

import (
	"errors"
	"math/big"
	"strings"
)

// maxAmountDigits bounds a price's integer digits: 2^256 has 78.
const maxAmountDigits = 60

// AtomicAmount converts a decimal price such as "0.001" into atomic units of a
// token with the given decimals ("1000" for 6). It refuses what is not a
// plain positive decimal, has more fraction digits than the token, or is
// zero.
func AtomicAmount(price string, decimals int) (string, error) {
	if decimals < 0 || decimals > 36 {
		return "", errors.New("decimals must be between 0 and 36")
	}
	whole, frac, dot := strings.Cut(price, ".")
	if whole == "" || dot && frac == "" {
		return "", errors.New("is not a decimal amount such as 0.001")
	}
	if len(whole) > maxAmountDigits {
		return "", errors.New("is too large")
	}
	if len(frac) > decimals {
		return "", errors.New("has more decimal places than the asset's decimals")
	}
	for _, c := range whole + frac {
		if c < '0' || c > '9' {
			return "", errors.New("is not a decimal amount such as 0.001")
		}
	}
	digits := whole + frac + strings.Repeat("0", decimals-len(frac))
	n, ok := new(big.Int).SetString(digits, 10)
	if !ok || n.Sign() <= 0 {
		return "", errors.New("must be more than zero")
	}
	return n.String(), nil
}
