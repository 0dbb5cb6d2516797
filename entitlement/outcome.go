package entitlement

// CacheOutcome says how an entitlement lookup was answered: from the cache,
// from the source, or from a stale record while the source failed. It is
// both the value the cache returns and the outcome label of
// tollgate_entitlement_cache_total and the decision log's "cache" field.
type CacheOutcome uint8

// The outcomes. Their names (String) are label values: part of the product.
const (
	CacheHit         CacheOutcome = iota // a fresh record from the cache
	CacheNegativeHit                     // a fresh "not found" from the cache
	CacheMiss                            // asked the source
	CacheStale                           // the source failed; an expired record was served
	CacheError                           // the source failed and nothing usable was cached
	// CacheSuspectNotFound: the source said "not found" but could not vouch
	// for it (ErrNotFoundUnconfirmed: it may have lost its data) for a key
	// that held a record; the record was served instead.
	CacheSuspectNotFound
)

var cacheOutcomeNames = [...]string{"hit", "negative_hit", "miss", "stale", "error", "suspect_not_found"}

// String is the outcome's label.
func (o CacheOutcome) String() string {
	if int(o) < len(cacheOutcomeNames) {
		return cacheOutcomeNames[o]
	}
	return "unknown"
}

// CacheOutcomes lists every outcome, for pre-creating metric series.
var CacheOutcomes = []CacheOutcome{CacheHit, CacheNegativeHit, CacheMiss, CacheStale, CacheError, CacheSuspectNotFound}
