package crypto

import (
	"bytes"
	"io"
	"mime"
	"strings"
)

// Field is one header field as the MTA passed it: the name, and the raw
// value after the colon (leading space removed, folding kept, no final line
// end). Values are never decoded: RFC 2047 words stay encoded.
type Field struct {
	Name  string
	Value string
}

// ChangeOp is the kind of a header change.
type ChangeOp int

// Header changes map one to one onto the milter's modification actions.
const (
	// Delete removes the Index-th field called Name.
	Delete ChangeOp = iota
	// Set replaces the value of the Index-th field called Name.
	Set
	// Add appends a field at the end of the header section.
	Add
)

// Change is one edit of the outer header section. Index counts fields of
// the same name (case-insensitive) from 1, as SMFIR_CHGHEADER does.
// Changes are meant to be applied in order; deletions of several fields of
// one name come highest index first, so that earlier deletions do not
// shift the indexes of later ones.
type Change struct {
	Op    ChangeOp
	Name  string
	Index int
	Value string
}

// Apply returns fields with changes applied, as an MTA would. It is used
// by the CLI and by tests to rebuild the delivered message.
func Apply(fields []Field, changes []Change) []Field {
	out := append([]Field(nil), fields...)
	for _, c := range changes {
		switch c.Op {
		case Add:
			out = append(out, Field{Name: c.Name, Value: c.Value})
		case Set, Delete:
			n := 0
			for i := range out {
				if !strings.EqualFold(out[i].Name, c.Name) {
					continue
				}
				n++
				if n != c.Index {
					continue
				}
				if c.Op == Set {
					out[i].Value = c.Value
				} else {
					out = append(out[:i], out[i+1:]...)
				}
				break
			}
		}
	}
	return out
}

// Split parses a message in RFC 5322 form (CRLF or LF line ends) into its
// header fields and its body. The body aliases data: nothing is copied.
// A message whose header section never ends is all header; its body is
// empty. Split never fails on content: what is not a header is body.
func Split(data []byte) ([]Field, []byte) {
	var fields []Field
	// The value of the field being read runs from valStart to valEnd
	// (continuation lines included); it becomes a string once complete,
	// so a long folded field costs one copy, not one per line.
	valStart, valEnd := -1, -1
	flush := func() {
		if valStart >= 0 {
			fields[len(fields)-1].Value = string(data[valStart:valEnd])
			valStart = -1
		}
	}
	pos := 0
	for pos < len(data) {
		lineEnd := len(data)
		next := len(data)
		if i := bytes.IndexByte(data[pos:], '\n'); i >= 0 {
			lineEnd, next = pos+i, pos+i+1
		}
		content := lineEnd
		if content > pos && data[content-1] == '\r' {
			content--
		}
		line := data[pos:content]
		switch {
		case len(line) == 0:
			flush()
			return fields, data[next:] // the empty line ends the header section
		case line[0] == ' ' || line[0] == '\t':
			if len(fields) == 0 {
				return nil, data // not a message header: all body
			}
			valEnd = content
		default:
			name, value, ok := bytes.Cut(line, []byte(":"))
			name = bytes.TrimRight(name, " \t") // obs-optional (RFC 5322 §4.5.3)
			if !ok || !validFieldName(name) {
				// Like Postfix's cleanup(8), a line that is not a header
				// field ends the header section: it is the body's first line.
				flush()
				return fields, data[pos:]
			}
			flush()
			fields = append(fields, Field{Name: string(name)})
			valStart = content - len(bytes.TrimLeft(value, " \t"))
			valEnd = content
		}
		pos = next
	}
	flush()
	return fields, nil
}

// validFieldName reports whether name is an RFC 5322 §3.6.8 field name:
// printable US-ASCII except colon, no spaces.
func validFieldName(name []byte) bool {
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// WriteMessage writes fields and body as a message with CRLF header lines.
func WriteMessage(w io.Writer, fields []Field, body []byte) error {
	var b bytes.Buffer
	for _, f := range fields {
		writeField(&b, f.Name, f.Value)
	}
	b.WriteString("\r\n")
	if _, err := w.Write(b.Bytes()); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// writeField writes "Name: value" with every line end inside the value
// made CRLF (the MTA may pass folded values with bare LF). Bare CRs just
// before a line end are dropped: a following CRLF would make them part of
// a different line end when the entity is read again (found by
// FuzzEncrypt with "Content-0:\r\r\r").
func writeField(b *bytes.Buffer, name, value string) {
	b.WriteString(name)
	b.WriteString(": ")
	for {
		i := strings.IndexByte(value, '\n')
		if i < 0 {
			break
		}
		b.WriteString(strings.TrimRight(value[:i], "\r"))
		b.WriteString("\r\n")
		value = value[i+1:]
	}
	b.WriteString(strings.TrimRight(value, "\r"))
	b.WriteString("\r\n")
}

// unfold joins a folded value into one line (RFC 5322 §2.2.3).
func unfold(v string) string {
	if !strings.ContainsAny(v, "\r\n") {
		return v
	}
	v = strings.ReplaceAll(v, "\r\n", "")
	return strings.ReplaceAll(v, "\n", "")
}

// mediaType returns the lower-cased media type and parameters of a
// Content-Type value. A value that mime cannot parse still yields its type
// and its parameters, read leniently, since mail in the wild is sloppy.
func mediaType(value string) (string, map[string]string) {
	v := unfold(value)
	mt, params, err := mime.ParseMediaType(v)
	if err == nil {
		return mt, params
	}
	parts := strings.Split(v, ";")
	params = map[string]string{}
	for _, p := range parts[1:] {
		k, val, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if _, dup := params[k]; !dup {
			params[k] = strings.Trim(strings.TrimSpace(val), `"`)
		}
	}
	return strings.ToLower(strings.TrimSpace(parts[0])), params
}

// asciiMediaType returns the media type of a Content-Type value, lower-
// cased, only if it is plain ASCII; otherwise "". Decisions to let a
// message pass unencrypted use it: Unicode case folding would turn
// "multİpart/encrypted" into "multipart/encrypted", which no mail reader
// treats as encrypted.
func asciiMediaType(value string) string {
	t, _, _ := strings.Cut(unfold(value), ";")
	t = strings.Trim(t, " \t")
	for i := 0; i < len(t); i++ {
		if t[i] >= 0x80 || t[i] < 0x21 {
			return ""
		}
	}
	return strings.ToLower(t)
}

// get returns the value of the first field called name, and whether it exists.
func get(fields []Field, name string) (string, bool) {
	for _, f := range fields {
		if strings.EqualFold(f.Name, name) {
			return f.Value, true
		}
	}
	return "", false
}

func isContentField(name string) bool {
	return len(name) > 8 && strings.EqualFold(name[:8], "content-")
}
