// Command facilitator serves an x402 facilitator for the demo: it verifies
// EIP-712 signatures for real and keeps token balances in memory
// (x402.LocalFacilitator), so the walkthrough in docs/x402.md runs with no
// chain. Never use it for real money.
//
//	go run ./examples/facilitator -mint 0xPAYER=10000000
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/tollgate-authz/tollgate/x402"
)

// mints collects -mint ADDRESS=AMOUNT flags.
type mints map[string]*big.Int

func (m mints) String() string { return fmt.Sprint(map[string]*big.Int(m)) }

func (m mints) Set(v string) error {
	addr, amt, ok := strings.Cut(v, "=")
	n, good := new(big.Int).SetString(amt, 10)
	if !ok || !good || n.Sign() <= 0 {
		return errors.New("want ADDRESS=AMOUNT in atomic units, such as 0xabc…=10000000 (10 USDC)")
	}
	m[addr] = n
	return nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8402", "address to serve /verify, /settle and /supported on")
	network := flag.String("network", "eip155:84532", "CAIP-2 network to accept")
	asset := flag.String("asset", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "token contract whose balances are kept")
	m := mints{}
	flag.Var(m, "mint", "ADDRESS=AMOUNT to credit before serving (repeatable)")
	flag.Parse()

	f := x402.NewLocalFacilitator(time.Now, *network)
	for addr, n := range m {
		f.Mint(*asset, addr, n)
	}
	srv := &http.Server{Addr: *listen, Handler: x402.FacilitatorHandler(f), ReadHeaderTimeout: 5 * time.Second}
	log.Printf("demo x402 facilitator on http://%s for %s (balances in memory)", *listen, *network)
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
