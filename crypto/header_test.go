package crypto

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// headerCRLF turns the LF line ends of s into CRLF.
func headerCRLF(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

// sameFields reports whether a and b hold the same fields (nil and empty
// are the same).
func sameFields(a, b []Field) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSplit(t *testing.T) {
	type F = Field
	for _, tc := range []struct {
		name   string
		in     string
		fields []Field
		body   string
	}{
		{"LF", "From: a@example.net\nTo: b@example.org\n\nbody\nline 2\n",
			[]F{{"From", "a@example.net"}, {"To", "b@example.org"}}, "body\nline 2\n"},
		{"CRLF", "From: a@example.net\r\nTo: b@example.org\r\n\r\nbody\r\nline 2\r\n",
			[]F{{"From", "a@example.net"}, {"To", "b@example.org"}}, "body\r\nline 2\r\n"},
		{"mixed line ends", "A: 1\r\nB: 2\n\r\nbody\n",
			[]F{{"A", "1"}, {"B", "2"}}, "body\n"},
		{"LF header, CRLF empty line", "A: 1\n\r\nbody", []F{{"A", "1"}}, "body"},
		{"folded with tab and spaces (CRLF)", "Subject: hello\r\n\tworld\r\n   again\r\nX: y\r\n\r\nB",
			[]F{{"Subject", "hello\r\n\tworld\r\n   again"}, {"X", "y"}}, "B"},
		{"folded (LF)", "Subject: hello\n world\nX: y\n\nB",
			[]F{{"Subject", "hello\n world"}, {"X", "y"}}, "B"},
		{"folded right after the colon", "To:\r\n alice@example.org,\r\n\tbob@example.org\r\n\r\n",
			[]F{{"To", "\r\n alice@example.org,\r\n\tbob@example.org"}}, ""},
		{"whitespace-only continuation line", "A: 1\n \nB: 2\n\nbody",
			[]F{{"A", "1\n "}, {"B", "2"}}, "body"},
		{"obs-optional space before colon", "Subject : x\r\n\r\n", []F{{"Subject", "x"}}, ""},
		{"obs-optional tab before colon", "Subject\t:x\r\n\r\n", []F{{"Subject", "x"}}, ""},
		{"no space after colon", "Subject:x\r\n\r\n", []F{{"Subject", "x"}}, ""},
		{"tab after colon", "Subject:\tx\r\n\r\n", []F{{"Subject", "x"}}, ""},
		{"trailing space kept", "Subject: x  \r\n\r\n", []F{{"Subject", "x  "}}, ""},
		{"colons in the value", "Date: Mon, 1 Jan 2024 10:00:00 +0000\n\n",
			[]F{{"Date", "Mon, 1 Jan 2024 10:00:00 +0000"}}, ""},
		{"empty value", "X-Empty:\r\nTo: b\r\n\r\nbody", []F{{"X-Empty", ""}, {"To", "b"}}, "body"},
		{"empty value with spaces", "X-Empty:   \r\n\r\n", []F{{"X-Empty", ""}}, ""},
		{"8-bit value", "Subject: Gr\xc3\xbc\xc3\x9fe \xff\r\n\r\nbody", []F{{"Subject", "Gr\xc3\xbc\xc3\x9fe \xff"}}, "body"},
		{"bare CR in a value", "A: x\ry\r\n\r\n", []F{{"A", "x\ry"}}, ""},
		{"duplicate names kept in order", "Received: 1\nreceived: 2\nRECEIVED: 3\n\n",
			[]F{{"Received", "1"}, {"received", "2"}, {"RECEIVED", "3"}}, ""},
		{"body with header-like lines", "A: 1\n\nB: 2\n\nC: 3\n", []F{{"A", "1"}}, "B: 2\n\nC: 3\n"},
		{"empty body", "A: 1\r\n\r\n", []F{{"A", "1"}}, ""},

		// A header section that never ends: all header, no body.
		{"never ends", "From: a\nTo: b", []F{{"From", "a"}, {"To", "b"}}, ""},
		{"never ends with a line end", "From: a\r\nTo: b\r\n", []F{{"From", "a"}, {"To", "b"}}, ""},
		{"never ends in a fold", "Subject: a\r\n b", []F{{"Subject", "a\r\n b"}}, ""},
		{"never ends with CR", "Subject: a\r", []F{{"Subject", "a"}}, ""},

		// A line that is not a field ends the header and is the body's first line.
		{"line without colon", "From: a\nThis is the body\nmore\n", []F{{"From", "a"}}, "This is the body\nmore\n"},
		{"line without colon (CRLF)", "From: a\r\nhello\r\n\r\nworld\r\n", []F{{"From", "a"}}, "hello\r\n\r\nworld\r\n"},
		{"name with a space", "From: a\nHello world: hi\n", []F{{"From", "a"}}, "Hello world: hi\n"},
		{"empty name", "From: a\n: value\n", []F{{"From", "a"}}, ": value\n"},
		{"8-bit name", "From: a\nCaf\xe9: x\n\nbody", []F{{"From", "a"}}, "Caf\xe9: x\n\nbody"},
		{"continuation after a non-field line", "From: a\nbody\n folded?\n", []F{{"From", "a"}}, "body\n folded?\n"},
		{"mbox From_ line", "From a@example.net Mon Jan  1 10:00:00 2024\nTo: b\n\nbody",
			nil, "From a@example.net Mon Jan  1 10:00:00 2024\nTo: b\n\nbody"},

		// Not a header at all.
		{"starts with a continuation line", " indented\nFrom: a\n\nbody", nil, " indented\nFrom: a\n\nbody"},
		{"starts with a tab", "\tFrom: a\n\nbody", nil, "\tFrom: a\n\nbody"},
		{"starts with an empty line", "\r\nFrom: a\r\n", nil, "From: a\r\n"},
		{"only an empty line (LF)", "\n", nil, ""},
		{"only an empty line (CRLF)", "\r\n", nil, ""},
		{"empty input", "", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.in)
			fields, body := Split(data)
			if !sameFields(fields, tc.fields) {
				t.Errorf("Split(%q) fields = %q, want %q", tc.in, fields, tc.fields)
			}
			if string(body) != tc.body {
				t.Errorf("Split(%q) body = %q, want %q", tc.in, body, tc.body)
			}
			if !bytes.HasSuffix(data, body) {
				t.Errorf("body %q is not a suffix of the input", body)
			}
		})
	}
}

// The body aliases the input: Split copies nothing.
func TestSplitBodyAliasesInput(t *testing.T) {
	for _, in := range []string{
		"A: 1\r\n\r\nbody",
		"A: 1\nB: 2\n folded\n\nbody\n",
		"A: 1\nnot a field\n",
		" continuation first\n",
		"plain text",
	} {
		data := make([]byte, len(in), len(in)+16) // spare capacity shows in cap(body)
		copy(data, in)
		_, body := Split(data)
		if len(body) == 0 {
			t.Fatalf("Split(%q): empty body", in)
		}
		k := len(data) - len(body)
		if &body[0] != &data[k] {
			t.Errorf("Split(%q): body is a copy, not data[%d:]", in, k)
			continue
		}
		if cap(body) != cap(data)-k {
			t.Errorf("Split(%q): cap(body) = %d, want cap(data)-%d = %d", in, cap(body), k, cap(data)-k)
		}
		data[k] = '#'
		if body[0] != '#' {
			t.Errorf("Split(%q): writing data[%d] did not change body[0]", in, k)
		}
	}
}

func TestApply(t *testing.T) {
	type F = Field
	base := []Field{
		{"Received", "r1"},
		{"Subject", "s"},
		{"received", "r2"},
		{"X-A", "a"},
		{"RECEIVED", "r3"},
	}
	for _, tc := range []struct {
		name    string
		fields  []Field
		changes []Change
		want    []Field
	}{
		{"no changes", base, nil, base},
		{"set", base, []Change{{Op: Set, Name: "Subject", Index: 1, Value: "new"}},
			[]F{{"Received", "r1"}, {"Subject", "new"}, {"received", "r2"}, {"X-A", "a"}, {"RECEIVED", "r3"}}},
		{"set keeps the field's own name", base, []Change{{Op: Set, Name: "SUBJECT", Index: 1, Value: "new"}},
			[]F{{"Received", "r1"}, {"Subject", "new"}, {"received", "r2"}, {"X-A", "a"}, {"RECEIVED", "r3"}}},
		{"set counts names case-insensitively", base, []Change{{Op: Set, Name: "Received", Index: 2, Value: "x"}},
			[]F{{"Received", "r1"}, {"Subject", "s"}, {"received", "x"}, {"X-A", "a"}, {"RECEIVED", "r3"}}},
		{"set the third", base, []Change{{Op: Set, Name: "received", Index: 3, Value: "x"}},
			[]F{{"Received", "r1"}, {"Subject", "s"}, {"received", "r2"}, {"X-A", "a"}, {"RECEIVED", "x"}}},
		{"set to empty", base, []Change{{Op: Set, Name: "X-A", Index: 1, Value: ""}},
			[]F{{"Received", "r1"}, {"Subject", "s"}, {"received", "r2"}, {"X-A", ""}, {"RECEIVED", "r3"}}},
		{"set index too high", base, []Change{{Op: Set, Name: "Received", Index: 4, Value: "x"}}, base},
		{"set index 0", base, []Change{{Op: Set, Name: "Received", Index: 0, Value: "x"}}, base},
		{"set negative index", base, []Change{{Op: Set, Name: "Received", Index: -1, Value: "x"}}, base},
		{"set missing name", base, []Change{{Op: Set, Name: "X-Missing", Index: 1, Value: "x"}}, base},
		{"set by prefix does not match", base, []Change{{Op: Set, Name: "X", Index: 1, Value: "x"}}, base},
		{"delete", base, []Change{{Op: Delete, Name: "Subject", Index: 1}},
			[]F{{"Received", "r1"}, {"received", "r2"}, {"X-A", "a"}, {"RECEIVED", "r3"}}},
		{"delete the first", base, []Change{{Op: Delete, Name: "RECEIVED", Index: 1}},
			[]F{{"Subject", "s"}, {"received", "r2"}, {"X-A", "a"}, {"RECEIVED", "r3"}}},
		{"delete the last", base, []Change{{Op: Delete, Name: "received", Index: 3}},
			[]F{{"Received", "r1"}, {"Subject", "s"}, {"received", "r2"}, {"X-A", "a"}}},
		{"delete highest index first", base, []Change{
			{Op: Delete, Name: "Received", Index: 3},
			{Op: Delete, Name: "Received", Index: 2},
			{Op: Delete, Name: "Received", Index: 1},
		}, []F{{"Subject", "s"}, {"X-A", "a"}}},
		{"delete 3 then 1 keeps 2", base, []Change{
			{Op: Delete, Name: "Received", Index: 3},
			{Op: Delete, Name: "Received", Index: 1},
		}, []F{{"Subject", "s"}, {"received", "r2"}, {"X-A", "a"}}},
		// Lowest first shifts the indexes: the second deletion hits what was the third.
		{"delete lowest index first shifts", base, []Change{
			{Op: Delete, Name: "Received", Index: 1},
			{Op: Delete, Name: "Received", Index: 2},
		}, []F{{"Subject", "s"}, {"received", "r2"}, {"X-A", "a"}}},
		{"delete index too high", base, []Change{{Op: Delete, Name: "Received", Index: 4}}, base},
		{"delete index 0", base, []Change{{Op: Delete, Name: "Subject", Index: 0}}, base},
		{"delete missing name", base, []Change{{Op: Delete, Name: "X-Missing", Index: 1}}, base},
		{"delete everything", []Field{{"A", "1"}}, []Change{{Op: Delete, Name: "a", Index: 1}}, nil},
		{"add", base, []Change{{Op: Add, Name: "X-New", Value: "n"}},
			[]F{{"Received", "r1"}, {"Subject", "s"}, {"received", "r2"}, {"X-A", "a"}, {"RECEIVED", "r3"}, {"X-New", "n"}}},
		{"add ignores the index", base, []Change{{Op: Add, Name: "X-New", Index: 1, Value: "n"}},
			[]F{{"Received", "r1"}, {"Subject", "s"}, {"received", "r2"}, {"X-A", "a"}, {"RECEIVED", "r3"}, {"X-New", "n"}}},
		{"add an existing name", base, []Change{{Op: Add, Name: "Subject", Value: "second"}},
			[]F{{"Received", "r1"}, {"Subject", "s"}, {"received", "r2"}, {"X-A", "a"}, {"RECEIVED", "r3"}, {"Subject", "second"}}},
		{"add to nothing", nil, []Change{{Op: Add, Name: "A", Value: "1"}, {Op: Add, Name: "B", Value: "2"}},
			[]F{{"A", "1"}, {"B", "2"}}},
		{"changes apply in order", base, []Change{
			{Op: Add, Name: "x-a", Value: "added"},
			{Op: Set, Name: "X-A", Index: 2, Value: "set"},
			{Op: Delete, Name: "X-A", Index: 1},
		}, []F{{"Received", "r1"}, {"Subject", "s"}, {"received", "r2"}, {"RECEIVED", "r3"}, {"x-a", "set"}}},
		{"protected-headers style", []Field{{"From", "a"}, {"Subject", "secret"}, {"Content-Type", "text/plain"}, {"Content-Transfer-Encoding", "8bit"}},
			[]Change{
				{Op: Set, Name: "Subject", Index: 1, Value: "..."},
				{Op: Delete, Name: "Content-Transfer-Encoding", Index: 1},
				{Op: Set, Name: "Content-Type", Index: 1, Value: "multipart/encrypted"},
			},
			[]F{{"From", "a"}, {"Subject", "..."}, {"Content-Type", "multipart/encrypted"}}},
		{"unknown op is ignored", base, []Change{{Op: ChangeOp(99), Name: "Subject", Index: 1, Value: "x"}}, base},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]Field(nil), tc.fields...)
			got := Apply(in, tc.changes)
			if !sameFields(got, tc.want) {
				t.Errorf("Apply =\n%q\nwant\n%q", got, tc.want)
			}
			if !sameFields(in, tc.fields) {
				t.Errorf("Apply modified its input: %q", in)
			}
		})
	}
}

// Apply must not write into the input's backing array, even with spare capacity.
func TestApplyDoesNotShareInput(t *testing.T) {
	in := make([]Field, 3, 10)
	copy(in, []Field{{"A", "1"}, {"B", "2"}, {"C", "3"}})
	out := Apply(in, []Change{{Op: Add, Name: "D", Value: "4"}})
	out[0].Value = "changed"
	extended := in[:4]
	if in[0].Value != "1" || extended[3] != (Field{}) {
		t.Errorf("Apply shares memory with its input: in = %q, in[:4] = %q", in, extended)
	}
}

func TestWriteMessage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fields []Field
		body   string
		want   string
	}{
		{"simple", []Field{{"From", "a"}, {"To", "b"}}, "body\r\n", "From: a\r\nTo: b\r\n\r\nbody\r\n"},
		{"bare LF in a folded value becomes CRLF", []Field{{"Subject", "hello\n world\n\tagain"}}, "",
			"Subject: hello\r\n world\r\n\tagain\r\n\r\n"},
		{"CRLF in a folded value stays CRLF", []Field{{"Subject", "hello\r\n world"}}, "",
			"Subject: hello\r\n world\r\n\r\n"},
		{"mixed line ends in a value", []Field{{"To", "a,\r\n b,\n c"}}, "", "To: a,\r\n b,\r\n c\r\n\r\n"},
		{"trailing CR dropped", []Field{{"A", "x\r"}}, "", "A: x\r\n\r\n"},
		{"body untouched", []Field{{"A", "1"}}, "LF\nCRLF\r\nbare CR\rno end",
			"A: 1\r\n\r\nLF\nCRLF\r\nbare CR\rno end"},
		{"body with header-like lines", []Field{{"A", "1"}}, "B: 2\n\n", "A: 1\r\n\r\nB: 2\n\n"},
		{"empty value", []Field{{"X-Empty", ""}}, "b", "X-Empty: \r\n\r\nb"},
		{"value folded after the colon", []Field{{"To", "\r\n alice"}}, "", "To: \r\n alice\r\n\r\n"},
		{"8-bit value", []Field{{"Subject", "Gr\xc3\xbc\xc3\x9fe"}}, "", "Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\n"},
		{"no fields", nil, "body", "\r\nbody"},
		{"no fields, no body", nil, "", "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteMessage(&b, tc.fields, []byte(tc.body)); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != tc.want {
				t.Errorf("WriteMessage = %q, want %q", got, tc.want)
			}
		})
	}
}

// failingWriter fails its n-th Write (counting from 1).
type failingWriter struct {
	n, calls int
	buf      bytes.Buffer
}

var errWrite = errors.New("disk full")

func (w *failingWriter) Write(p []byte) (int, error) {
	w.calls++
	if w.calls == w.n {
		return 0, errWrite
	}
	return w.buf.Write(p)
}

func TestWriteMessageErrors(t *testing.T) {
	for n := 1; n <= 2; n++ {
		w := &failingWriter{n: n}
		err := WriteMessage(w, []Field{{"A", "1"}}, []byte("body"))
		if !errors.Is(err, errWrite) {
			t.Errorf("Write %d failing: WriteMessage = %v, want %v", n, err, errWrite)
		}
	}
	w := &failingWriter{n: 3}
	if err := WriteMessage(w, []Field{{"A", "1"}}, []byte("body")); err != nil || w.buf.String() != "A: 1\r\n\r\nbody" {
		t.Errorf("WriteMessage = %v, wrote %q", err, w.buf.String())
	}
}

// Split → WriteMessage → Split gives the same fields and body, and for
// canonical CRLF input the same bytes.
func TestSplitWriteMessageRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		in        string
		identical bool // WriteMessage reproduces the input exactly
	}{
		{"From: a@example.net\r\nTo: b@example.org\r\n\r\nbody\r\n", true},
		{"Subject: hello\r\n\tworld\r\n   again\r\nX: y\r\n\r\nB\r\nC", true},
		{"To:\r\n alice@example.org,\r\n\tbob@example.org\r\n\r\n", false}, // "To:" becomes "To: "
		{"Subject : x\r\n\r\nbody", false},                                 // obs-optional space dropped
		{"Subject:x\r\n\r\nbody", false},
		{"X-Empty:\r\nTo: b\r\n\r\nbody", false},
		{"Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\n8-bit \xff body\r\n", true},
		{"A: 1\r\n \r\nB: 2\r\n\r\nbody", true},
		{"From: a\r\nnot a field\r\nmore\r\n", false}, // the blank line is added
		{"From: a\r\nTo: b\r\n", false},               // never ends: a blank line is added
		{" continuation first\r\n\r\nbody", false},    // all body
		{headerCRLF(stdHeaderForRoundTrip) + "\r\nbody\r\n", true},
		{"", false},
	} {
		data := []byte(tc.in)
		fields, body := Split(data)
		var b bytes.Buffer
		if err := WriteMessage(&b, fields, body); err != nil {
			t.Fatal(err)
		}
		fields2, body2 := Split(b.Bytes())
		if !sameFields(fields, fields2) {
			t.Errorf("%q: fields %q re-split as %q", tc.in, fields, fields2)
		}
		if !bytes.Equal(body, body2) {
			t.Errorf("%q: body %q re-split as %q", tc.in, body, body2)
		}
		if tc.identical && b.String() != tc.in {
			t.Errorf("%q: written as %q", tc.in, b.String())
		}
	}
}

const stdHeaderForRoundTrip = "Received: from client.example (client.example [192.0.2.1])\n" +
	"\tby mx.example.org (Postfix) with ESMTPS id 4ABCDEF;\n\tThu, 26 Nov 2026 10:00:00 +0000 (UTC)\n" +
	"From: Sender <sender@example.net>\n" +
	"To: Alice <alice@example.org>,\n Bob <bob@example.org>\n" +
	"Subject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\n" +
	"Content-Type: text/plain;\n\tcharset=\"utf-8\"\n"

func FuzzSplit(f *testing.F) {
	for _, seed := range []string{
		"",
		"\r\n",
		"From: a@example.net\r\nTo: b@example.org\r\n\r\nbody\r\n",
		"Subject: hello\n\tworld\n  again\nX: y\n\nB",
		"Subject : x\r\nX-Empty:\r\n\r\n",
		"From: a\nnot a field\nmore\n",
		" continuation first\nFrom: a\n\nbody",
		"A: x\r\r\n \r\n\r\nb",
		"A: 1\r",
		"Caf\xe9: x\n\nbody",
		"Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\n",
		headerCRLF(stdHeaderForRoundTrip) + "\r\nbody",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		orig := append([]byte(nil), data...)
		fields, body := Split(data)
		if !bytes.Equal(data, orig) {
			t.Fatalf("Split modified its input")
		}
		if !bytes.HasSuffix(data, body) {
			t.Fatalf("body %q is not a suffix of %q", body, data)
		}
		if len(body) > 0 && &body[len(body)-1] != &data[len(data)-1] {
			t.Fatalf("body is not data[%d:]", len(data)-len(body))
		}
		for _, fl := range fields {
			if !validFieldName([]byte(fl.Name)) {
				t.Fatalf("invalid field name %q", fl.Name)
			}
		}
		var b bytes.Buffer
		if err := WriteMessage(&b, fields, body); err != nil {
			t.Fatal(err)
		}
		fields2, body2 := Split(b.Bytes())
		if len(fields2) != len(fields) {
			t.Fatalf("%q: %d fields %q, re-split %q as %d fields %q",
				data, len(fields), fields, b.Bytes(), len(fields2), fields2)
		}
		if !bytes.Equal(body2, body) {
			t.Fatalf("%q: body %q re-split as %q", data, body, body2)
		}
		// Apply with no changes is a copy.
		if !reflect.DeepEqual(Apply(fields, nil), append([]Field(nil), fields...)) {
			t.Fatalf("Apply(fields, nil) differs from fields")
		}
	})
}
