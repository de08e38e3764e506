package crypto

// The hostile MIME corpus (testdata/hostile/mime, see its README.md):
// every file is split, must not count as already encrypted, and is
// encrypted, with and without header protection,
// to a v4 key (SEIPDv1, written by this package) and a v6 key (SEIPDv2,
// written by go-crypto). Each result must be a well-formed RFC 3156
// message whose ciphertext decrypts to the original Content-* fields and
// the original body byte for byte. Nothing may panic or hang; each run is
// bounded in CPU time, wall time and bytes allocated. A file added to the
// directory is covered without touching this test.

import (
	"bytes"
	"fmt"
	"mime"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"lacre.io/milter/internal/hostiletest"
	"lacre.io/milter/internal/keystest"
	"lacre.io/milter/internal/pgptest"
	"lacre.io/milter/internal/testkeys"
	"lacre.io/milter/keys"
)

const hostileDir = "../testdata/hostile"

// Bounds of one Split + Encrypt of one corpus file:
//
//   - CPU time (user+system of the process, getrusage) at most
//     hostileCPU. The largest files (1 MB) take about 30 ms; 2 s leaves
//     room for a slow machine and still catches a quadratic blow-up on
//     10,000 fields or a 1 MB line. CPU time, unlike wall time, does not
//     grow when other processes load the machine.
//   - wall time at most hostileWall (catches waiting and sleeping).
//   - bytes allocated (runtime.MemStats.TotalAlloc) at most
//     hostileAllocPerByte times the file plus hostileAllocConst: the
//     result is about 1.37 times the body, the field values are copied
//     once by Split and again into the inner header (twice more with
//     header protection, for the protected copy and HP-Outer), and the
//     inner header's buffer grows by doubling. Observed worst: 5.2 MiB
//     for the 1 MB Subject with header protection (9.2 MiB under -race).
//
// Under the race detector the time bounds are not asserted.
const (
	hostileCPU          = 2 * time.Second
	hostileWall         = 15 * time.Second
	hostileAllocPerByte = 12
	hostileAllocConst   = 2 << 20
	hostileHang         = 60 * time.Second
)

func TestHostileMIME(t *testing.T) {
	names, files := hostiletest.Files(t, filepath.Join(hostileDir, "mime"))
	var worst hostiletest.Measure
	worstShare, worstName := 0.0, ""
	for _, kind := range []testkeys.Kind{testkeys.Curve25519, testkeys.V6} {
		key, secret := keystest.Key(t, kind, "alice@example.org")
		for _, name := range names {
			data := files[name]
			orig := bytes.Clone(data)
			for _, protect := range []bool{false, true} {
				run := fmt.Sprintf("%s/%v/protect=%v", name, kind, protect)
				t.Run(run, func(t *testing.T) {
					var fields []Field
					var body []byte
					var res *Result
					var err error
					already := false
					m := hostiletest.Run(t, run, hostileHang, func() {
						fields, body = Split(data)
						already = AlreadyEncrypted(fields, body)
						res, err = Encrypt(fields, body, []*keys.Key{key}, Options{ProtectHeaders: protect})
					})
					share := m.Check(t, run, hostiletest.Bounds{CPU: hostileCPU, Wall: hostileWall, Alloc: uint64(hostileAllocPerByte*len(data) + hostileAllocConst)})
					worst.CPU, worst.Wall = max(worst.CPU, m.CPU), max(worst.Wall, m.Wall)
					if share > worstShare {
						worstShare, worstName = share, run
					}
					// No corpus file is encrypted mail; the look-alikes
					// (lookalike-*) only pretend to be.
					if already {
						t.Errorf("%s: counts as already encrypted: it would pass in clear", run)
					}
					if err != nil {
						t.Fatalf("%s: Encrypt: %v", run, err)
					}
					if !bytes.Equal(data, orig) {
						t.Fatalf("%s: the input was modified", run)
					}
					// Split keeps the body as it is: the tail of the input.
					if !bytes.HasSuffix(data, body) {
						t.Fatalf("%s: the body is not the end of the message", run)
					}
					outer := Apply(fields, res.Changes)
					ct := hostileCheckOuter(t, run, outer, oracleProtects(fields, protect))
					// The standard library's MIME parsers read the structure
					// (on a header they can always read: the original fields
					// may hold anything).
					var msg bytes.Buffer
					if err := WriteMessage(&msg, []Field{{"MIME-Version", "1.0"}, {"Content-Type", ct}}, res.Body); err != nil {
						t.Fatal(err)
					}
					_, armored := pgptest.Open(t, msg.Bytes())
					inner, md := pgptest.Decrypt(t, armored, secret)
					if md.DecryptedWith.Entity != secret {
						t.Errorf("%s: not decrypted with the recipient's key", run)
					}
					hostileCheckInner(t, run, inner, fields, body, oracleProtects(fields, protect))
				})
			}
		}
	}
	t.Logf("worst case: %v CPU, %v wall; %.0f%% of the allocation bound (%s)",
		worst.CPU.Round(time.Millisecond), worst.Wall.Round(time.Millisecond), 100*worstShare, worstName)
}

// hostileCheckOuter checks the outer header and returns its Content-Type:
// exactly one, multipart/encrypted for PGP/MIME; no other Content-*
// field; a MIME-Version; with header protection, no readable Subject.
func hostileCheckOuter(t *testing.T, name string, outer []Field, protect bool) string {
	t.Helper()
	var types []string
	version := false
	for _, f := range outer {
		switch low := strings.ToLower(f.Name); {
		case low == "content-type":
			types = append(types, f.Value)
		case strings.HasPrefix(low, "content-") && len(low) > len("content-"):
			t.Errorf("%s: outer header still has %s: %.80q", name, f.Name, f.Value)
		case low == "mime-version":
			version = true
		case low == "subject" && protect && f.Value != ObscuredSubject:
			t.Errorf("%s: outer Subject %.80q with header protection", name, f.Value)
		case protect && oracleIsConcealed(f.Name):
			t.Errorf("%s: outer %s %.80q with header protection", name, f.Name, f.Value)
		}
	}
	if len(types) != 1 {
		t.Fatalf("%s: outer Content-Type fields %.200q, want one", name, types)
	}
	mt, params, err := mime.ParseMediaType(types[0])
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" || params["boundary"] == "" {
		t.Fatalf("%s: outer Content-Type %q (%v)", name, types[0], err)
	}
	if !version {
		t.Errorf("%s: no outer MIME-Version", name)
	}
	return types[0]
}

// hostileNorm gives a header value's lines LF ends and drops the CRs
// before them, which are line-end noise (the encrypted entity is written
// with CRLF).
func hostileNorm(v string) string {
	lines := strings.Split(v, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, "\r")
	}
	return strings.Join(lines, "\n")
}

func hostileIsContent(name string) bool {
	return len(name) > len("content-") && strings.EqualFold(name[:len("content-")], "content-")
}

// hostileCheckInner checks the decrypted entity against the original:
// the body byte for byte; the Content-* fields other than Content-Type
// name for name and value for value, in their order; one Content-Type,
// the original's first (with the header-protection parameters when
// protected) or text/plain when there was none; with protection, the
// protected fields.
func hostileCheckInner(t *testing.T, name string, inner []byte, fields []Field, body []byte, protect bool) {
	t.Helper()
	innerFields, innerBody := Split(inner)
	if !bytes.Equal(innerBody, body) {
		i := 0
		for i < min(len(innerBody), len(body)) && innerBody[i] == body[i] {
			i++
		}
		t.Fatalf("%s: decrypted body differs from the original at byte %d (lengths %d and %d)", name, i, len(innerBody), len(body))
	}
	var want, got []string
	var types []string
	for _, f := range fields {
		if hostileIsContent(f.Name) && !strings.EqualFold(f.Name, "Content-Type") {
			want = append(want, f.Name+": "+hostileNorm(f.Value))
		}
	}
	innerSubject := ""
	for _, f := range innerFields {
		switch {
		case strings.EqualFold(f.Name, "Content-Type"):
			types = append(types, hostileNorm(f.Value))
		case hostileIsContent(f.Name):
			got = append(got, f.Name+": "+hostileNorm(f.Value))
		case strings.EqualFold(f.Name, "Subject") && innerSubject == "":
			innerSubject = f.Value
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: inner Content-* fields %.300q, want %.300q", name, got, want)
	}
	if len(types) != 1 {
		t.Fatalf("%s: inner Content-Type fields %.300q, want one", name, types)
	}
	orig, has := get(fields, "Content-Type")
	orig = hostileNorm(orig)
	switch {
	case !has:
		if err := oracleDefaultType(strings.TrimSuffix(types[0], `; protected-headers="v1"; hp="cipher"`), body); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	case !protect:
		if types[0] != orig {
			t.Errorf("%s: inner Content-Type %.200q, want the original %.200q", name, types[0], orig)
		}
	default:
		low := strings.ToLower(orig)
		if !strings.Contains(low, "hp=") && !strings.Contains(low, "protected-headers") &&
			!strings.HasPrefix(types[0], strings.TrimRight(orig, " \t\r\n;")) {
			t.Errorf("%s: inner Content-Type %.200q does not keep the original %.200q", name, types[0], orig)
		}
	}
	if protect {
		if _, params := mediaType(types[0]); params["hp"] != "cipher" || params["protected-headers"] != "v1" {
			t.Errorf("%s: inner Content-Type %.200q lacks the header-protection parameters", name, types[0])
		}
		if s, ok := get(fields, "Subject"); ok && hostileNorm(innerSubject) != hostileNorm(s) {
			t.Errorf("%s: protected Subject %.80q, want %.80q", name, innerSubject, s)
		}
	}
}

// TestHostileCorpusMatchesGenerator: the committed MIME files are exactly
// what testdata/hostile/gen.go writes, so the corpus and its generator
// (and the README that describes both) cannot drift apart.
func TestHostileCorpusMatchesGenerator(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, "run", filepath.Join(hostileDir, "gen.go"), "-check", "-dir", hostileDir)
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestHostileREADMEListsEveryCase: README.md names every file of the
// corpus, with its expected outcome.
func TestHostileREADMEListsEveryCase(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(hostileDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"mime", "keys"} {
		ents, err := os.ReadDir(filepath.Join(hostileDir, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !bytes.Contains(readme, []byte("`"+e.Name()+"`")) {
				t.Errorf("README.md does not describe %s/%s", sub, e.Name())
			}
		}
	}
}
