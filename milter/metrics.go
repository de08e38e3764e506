package milter

import "time"

// Metrics receives what the milter counts. The milter does not depend on
// a metrics library: lacre-milter serve implements this with Prometheus.
// Implementations must be safe for concurrent use and fast.
type Metrics interface {
	// Message is called once per message with its action ("encrypted",
	// "clear", "already-encrypted", "held", "tempfail", "rejected",
	// "error"), the transaction's class, and the sizes in bytes.
	Message(action, class string, sizeIn, sizeOut int)
	// Encrypted is called with the time one encryption took.
	Encrypted(d time.Duration)
	// KeysFound is called after each recipient's keys were looked up;
	// err is the lookup's error, if any.
	KeysFound(err error)
}

type noMetrics struct{}

func (noMetrics) Message(string, string, int, int) {}
func (noMetrics) Encrypted(time.Duration)          {}
func (noMetrics) KeysFound(error)                  {}
