// Command verify checks LAP log evidence with the Go reference implementations
// golang.org/x/mod/sumdb/note (signed notes) and golang.org/x/mod/sumdb/tlog (RFC 6962 proofs).
//
//	verify checkpoint VKEY CHECKPOINT_FILE                 prints "<size> <base64 root>"
//	verify inclusion  VKEY CHECKPOINT_FILE INDEX ENTRY_FILE PROOF_JSON
//	verify consistency VKEY OLD_CHECKPOINT NEW_CHECKPOINT PROOF_JSON
//
// Exit status 0 only when everything verifies.
package main

import (
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
	default:
		fail("unknown command %q", os.Args[1])
	}
}
