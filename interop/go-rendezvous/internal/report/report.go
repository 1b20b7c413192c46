// Package report prints the programs' JSON lines: one object per step, and a failing step ends the program
// with exit status 1 after saying why, so a test reads both the evidence and the verdict.
package report

import (
	"encoding/json"
	"fmt"
	"os"
)

// Step prints {"step": name, "ok": true, ...fields}.
func Step(name string, fields map[string]any) {
	line := map[string]any{"step": name, "ok": true}
	for k, v := range fields {
		line[k] = v
	}
	b, err := json.Marshal(line)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(b))
}

// Fail prints {"step": name, "ok": false, "error": ...} and exits 1.
func Fail(name string, format string, args ...any) {
	b, _ := json.Marshal(map[string]any{"step": name, "ok": false, "error": fmt.Sprintf(format, args...)})
	fmt.Println(string(b))
	os.Exit(1)
}

// Check fails the step when err is not nil.
func Check(name string, err error) {
	if err != nil {
		Fail(name, "%v", err)
	}
}
