// Command spread is the SMTP client of bench/throughput.sh's alias cases:
// smtp-source sends every message to one recipient, which after the first
// message is answered from caches; spread sends each message to the next
// address of a list (a 10,000-entry virtual_alias_maps table's keys), so
// that the recipients are spread over the table.
//
//	spread -addr 127.0.0.1:2525 -rcpts list.txt -offset 0 -n 5000 -s 20 -l 4096
//
// Like "smtp-source -s S -m N -r 1 -l L": S sessions in parallel, one
// message per SMTP session, one recipient, a body of L bytes. Message i
// (from 0) goes to line (offset + i) mod len of the list. It exits 1 if
// any message was not accepted.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net/smtp"
	"os"
	"strings"
	"sync"
	"sync/atomic"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:25", "the SMTP server, HOST:PORT")
	from := flag.String("from", "sender@client.test", "the envelope sender")
	list := flag.String("rcpts", "", "file of recipient addresses, one a line")
	offset := flag.Int("offset", 0, "index in the list of the first message's recipient")
	n := flag.Int("n", 1000, "messages")
	sessions := flag.Int("s", 20, "sessions in parallel")
	size := flag.Int("l", 4096, "body size in bytes")
	flag.Parse()
	rcpts, err := readList(*list)
	if err != nil || len(rcpts) == 0 {
		fmt.Fprintf(os.Stderr, "spread: -rcpts %q: %v (no addresses?)\n", *list, err)
		os.Exit(2)
	}
	var body strings.Builder
	line := strings.Repeat("x", 70) + "\r\n"
	for body.Len()+len(line) <= *size {
		body.WriteString(line)
	}
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	var errOnce sync.Once
	for range *sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *n {
					return
				}
				to := rcpts[(*offset+i)%len(rcpts)]
				msg := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: spread %d\r\nMessage-ID: <spread-%d-%d@client.test>\r\n\r\n%s",
					*from, to, i, *offset, i, body.String())
				if err := smtp.SendMail(*addr, nil, *from, []string{to}, []byte(msg)); err != nil {
					failed.Add(1)
					errOnce.Do(func() { fmt.Fprintf(os.Stderr, "spread: message %d to %s: %v\n", i, to, err) })
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		fmt.Fprintf(os.Stderr, "spread: %d of %d messages failed\n", f, *n)
		os.Exit(1)
	}
}

func readList(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}
