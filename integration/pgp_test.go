package integration

import (
	"bytes"
)

// splitMessage returns the header (up to and including the CRLF that
// ends the last field) and the body of a CRLF message.
func splitMessage(msg []byte) (header, body []byte) {
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return msg[:i+2], msg[i+4:]
	}
	return msg, nil
}
