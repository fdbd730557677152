package openaiwebhook

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
)

// eventFilter is the events allow-list: exact types, and families given as
// a prefix ending in "." (from "batch.*").
type eventFilter struct {
	exact    map[string]bool
	families []string
}

// newEventFilter checks and compiles the patterns; nil without patterns.
func newEventFilter(patterns []string) (*eventFilter, error) {
	if len(patterns) == 0 {
		return nil, nil
	}
	f := &eventFilter{exact: map[string]bool{}}
	for i, p := range patterns {
		if err := checkEventPattern(p); err != nil {
			return nil, fmt.Errorf("events[%d]: %q: %w", i, p, err)
		}
		if family, ok := strings.CutSuffix(p, "*"); ok {
			f.families = append(f.families, family)
		} else {
			f.exact[p] = true
		}
	}
	return f, nil
}

// checkEventPattern accepts an event type ("response.completed") or a
// family ("batch.*", "fine_tuning.job.*"): segments of printable ASCII
// without spaces or "*", separated by single dots, "*" only as the whole
// last segment of a family.
func checkEventPattern(p string) error {
	segments := strings.Split(p, ".")
	for i, s := range segments {
		switch {
		case s == "":
			return fmt.Errorf("empty segment")
		case s == "*" && i == len(segments)-1 && i > 0:
			continue
		case strings.Contains(s, "*"):
			return fmt.Errorf(`"*" may only be the last segment, after a dot, as in "batch.*"`)
		}
		for _, c := range []byte(s) {
			if c <= ' ' || c > '~' {
				return fmt.Errorf("a space, a control character or a character outside ASCII")
			}
		}
	}
	return nil
}

// matches reports whether an event of type typ passes; "" (no type) never
// does.
func (f *eventFilter) matches(typ string) bool {
	if typ == "" {
		return false
	}
	if f.exact[typ] {
		return true
	}
	for _, family := range f.families {
		if strings.HasPrefix(typ, family) {
			return true
		}
	}
	return false
}

// event is what the handler reads of a verified body, only when something
// needs it: the allow-list, or an event placeholder.
type event struct {
	once    sync.Once
	body    *bufferedBody
	typ, id string
}

// fields parses the body once and returns its type and id; both are "" for
// a body that is not a JSON object with a string "type".
func (e *event) fields() (typ, id string) {
	e.once.Do(e.parse)
	return e.typ, e.id
}

func (e *event) parse() {
	var ev struct {
		Type json.RawMessage `json:"type"`
		ID   json.RawMessage `json:"id"`
	}
	if !e.body.view(func(raw []byte) bool { return json.Unmarshal(raw, &ev) == nil }) {
		return
	}
	typ, ok := jsonString(ev.Type)
	if !ok {
		return
	}
	e.typ = typ
	e.id, _ = jsonString(ev.ID)
}

// jsonString returns raw as a string if it is a JSON string.
func jsonString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}
