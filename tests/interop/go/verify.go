// Command verify checks LAP log evidence with the Go reference implementations
// golang.org/x/mod/sumdb/note (signed notes) and golang.org/x/mod/sumdb/tlog (RFC 6962 proofs).
//
//	verify checkpoint VKEY CHECKPOINT_FILE                 prints "<size> <base64 root>"
//	verify inclusion  VKEY CHECKPOINT_FILE INDEX ENTRY_FILE PROOF_JSON
//	verify consistency VKEY OLD_CHECKPOINT NEW_CHECKPOINT PROOF_JSON
//	verify tlogproof  VKEY PROOF_FILE ENTRY_FILE [COSIGNER_VKEY...]
//
// tlogproof reads a C2SP tlog-proof (c2sp.org/tlog-proof@v1: index, audit path, checkpoint)
// with this program's own parser, opens its checkpoint with the log key and every other key
// given (each must have signed it), and checks the entry's inclusion at the index.
//
// Exit status 0 only when everything verifies.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", a...)
	os.Exit(1)
}

// openCheckpoint verifies the note's signature and parses the tlog-checkpoint body.
func openCheckpoint(vkey, path string) (origin string, size int64, root tlog.Hash) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	msg, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		fail("checkpoint signature: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(n.Text, "\n"), "\n")
	if len(lines) < 3 {
		fail("checkpoint has %d lines", len(lines))
	}
	size, err = strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("tree size: %v", err)
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		fail("root hash")
	}
	copy(root[:], raw)
	return lines[0], size, root
}

func hashes(path string) []tlog.Hash {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	var p struct {
		Hashes []string `json:"hashes"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		fail("proof JSON: %v", err)
	}
	out := make([]tlog.Hash, len(p.Hashes))
	for i, h := range p.Hashes {
		raw, err := base64.StdEncoding.DecodeString(h)
		if err != nil || len(raw) != tlog.HashSize {
			fail("proof hash %d", i)
		}
		copy(out[i][:], raw)
	}
	return out
}

// parseCheckpoint parses a tlog-checkpoint body (the text of an opened note).
func parseCheckpoint(text string) (origin string, size int64, root tlog.Hash) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		fail("checkpoint has %d lines", len(lines))
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("tree size: %v", err)
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		fail("root hash")
	}
	copy(root[:], raw)
	return lines[0], size, root
}

// tlogProof checks a c2sp.org/tlog-proof@v1 file for an entry.
func tlogProof(vkeys []string, proofPath, entryPath string) {
	data, err := os.ReadFile(proofPath)
	if err != nil {
		fail("%v", err)
	}
	entry, err := os.ReadFile(entryPath)
	if err != nil {
		fail("%v", err)
	}
	rest := data
	line := func() string {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			fail("tlog-proof ends early")
		}
		l := string(rest[:i])
		rest = rest[i+1:]
		return l
	}
	if line() != "c2sp.org/tlog-proof@v1" {
		fail("not a tlog-proof")
	}
	l := line()
	if strings.HasPrefix(l, "extra ") {
		l = line()
	}
	if !strings.HasPrefix(l, "index ") {
		fail("no index line")
	}
	index, err := strconv.ParseInt(strings.TrimPrefix(l, "index "), 10, 64)
	if err != nil {
		fail("index: %v", err)
	}
	var path tlog.RecordProof
	for {
		l = line()
		if l == "" {
			break
		}
		raw, err := base64.StdEncoding.DecodeString(l)
		if err != nil || len(raw) != tlog.HashSize {
			fail("path hash")
		}
		var h tlog.Hash
		copy(h[:], raw)
		path = append(path, h)
	}
	var verifiers []note.Verifier
	for _, k := range vkeys {
		v, err := note.NewVerifier(k)
		if err != nil {
			fail("verifier key %q: %v", k, err)
		}
		verifiers = append(verifiers, v)
	}
	n, err := note.Open(rest, note.VerifierList(verifiers...))
	if err != nil {
		fail("checkpoint signature: %v", err)
	}
	if len(n.Sigs) != len(verifiers) {
		fail("%d of the %d keys signed the checkpoint", len(n.Sigs), len(verifiers))
	}
	origin, size, root := parseCheckpoint(n.Text)
	if origin != verifiers[0].Name() {
		fail("checkpoint origin %q is not the log key's name %q", origin, verifiers[0].Name())
	}
	if err := tlog.CheckRecord(path, size, root, index, tlog.RecordHash(entry)); err != nil {
		fail("inclusion of %d in %d: %v", index, size, err)
	}
	fmt.Printf("ok tlogproof %d/%d signed by %d keys\n", index, size, len(n.Sigs))
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: verify checkpoint|inclusion|consistency ...")
	}
	switch os.Args[1] {
	case "checkpoint":
		_, size, root := openCheckpoint(os.Args[2], os.Args[3])
		fmt.Printf("%d %s\n", size, base64.StdEncoding.EncodeToString(root[:]))
	case "inclusion":
		_, size, root := openCheckpoint(os.Args[2], os.Args[3])
		index, err := strconv.ParseInt(os.Args[4], 10, 64)
		if err != nil {
			fail("index: %v", err)
		}
		entry, err := os.ReadFile(os.Args[5])
		if err != nil {
			fail("%v", err)
		}
		proof := tlog.RecordProof(hashes(os.Args[6]))
		if err := tlog.CheckRecord(proof, size, root, index, tlog.RecordHash(entry)); err != nil {
			fail("inclusion of %d in %d: %v", index, size, err)
		}
		fmt.Printf("ok inclusion %d/%d\n", index, size)
	case "consistency":
		_, oldSize, oldRoot := openCheckpoint(os.Args[2], os.Args[3])
		_, newSize, newRoot := openCheckpoint(os.Args[2], os.Args[4])
		proof := tlog.TreeProof(hashes(os.Args[5]))
		if err := tlog.CheckTree(proof, newSize, newRoot, oldSize, oldRoot); err != nil {
			fail("consistency %d -> %d: %v", oldSize, newSize, err)
		}
		fmt.Printf("ok consistency %d -> %d\n", oldSize, newSize)
	case "tlogproof":
		if len(os.Args) < 5 {
			fail("usage: verify tlogproof VKEY PROOF ENTRY [COSIGNER_VKEY...]")
		}
		tlogProof(append([]string{os.Args[2]}, os.Args[5:]...), os.Args[3], os.Args[4])
	default:
		fail("unknown command %q", os.Args[1])
	}
}
