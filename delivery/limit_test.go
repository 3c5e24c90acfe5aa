package delivery

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	good := map[string]Rate{
		"":                 {},
		"off":              {},
		"200/s":            {Messages: 200},
		"4MiB/s":           {Bytes: 4 << 20},
		"200/s,4MiB/s":     {Messages: 200, Bytes: 4 << 20},
		" 1.5KB/s , 10/s ": {Messages: 10, Bytes: 1500},
		"100B/s":           {Bytes: 100},
	}
	for in, want := range good {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"200", "200/m", "-1/s", "0/s", "x/s", "1/s,2/s", "1MiB/s,2KB/s", "5QB/s"} {
		if _, err := ParseRate(in); !errors.Is(err, ErrBadRate) {
			t.Errorf("ParseRate(%q) = %v, want ErrBadRate", in, err)
		}
	}
	if r, _ := ParseRate("200/s,4MiB/s"); r.String() != "200/s,4194304B/s" {
		t.Errorf("String() = %q", r.String())
	}
}

func TestLimiterBuckets(t *testing.T) {
	t0 := time.Unix(1000, 0)
	if NewLimiter(Rate{}, t0) != nil {
		t.Fatal("an unlimited rate made a limiter")
	}
	var none *Limiter
	if none.Admit(t0, 1<<30) != Admit {
		t.Fatal("a nil limiter refused")
	}
	l := NewLimiter(Rate{Messages: 10, Bytes: 1000}, t0)
	admitted := 0
	for range 20 {
		if l.Admit(t0, 10) == Admit {
			admitted++
		}
	}
	if admitted != 10 {
		t.Fatalf("burst admitted %d, want 10", admitted)
	}
	if l.Admit(t0.Add(100*time.Millisecond), 10) != Admit {
		t.Fatal("one message's worth refilled in 100ms was refused")
	}
	if l.Admit(t0.Add(100*time.Millisecond), 10) != Refuse {
		t.Fatal("no tokens left, yet admitted")
	}
	// Bytes: a message larger than the whole burst passes on a full bucket
	// and leaves it in debt.
	l = NewLimiter(Rate{Bytes: 1000}, t0)
	if l.Admit(t0, 5000) != Admit {
		t.Fatal("an oversized message was refused on a full bucket")
	}
	if l.Admit(t0.Add(2*time.Second), 10) != Refuse {
		t.Fatal("the debt of an oversized message was forgiven early")
	}
	if l.Admit(t0.Add(6*time.Second), 10) != Admit {
		t.Fatal("refused after the debt was repaid")
	}
}

func TestLimiterFloodAndLog(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := NewLimiter(Rate{Messages: 10}, t0)
	now := t0
	verdict := Admit
	// 2x over its rate for 10s: refused, never a flood; one log line per
	// LogEvery, counting every refusal.
	refused, logged, lines := 0, 0, 0
	for i := 0; i < 200; i++ {
		now = t0.Add(time.Duration(i) * 50 * time.Millisecond)
		if verdict = l.Admit(now, 1); verdict == Flood {
			t.Fatalf("flood at %v for 2x the rate", now.Sub(t0))
		}
		if verdict == Refuse {
			refused++
			if n, due := l.Refused(now); due {
				logged += n
				lines++
			}
		}
	}
	if refused < 90 || lines != 2 || logged > refused || logged < refused/2 {
		t.Fatalf("refused %d, %d log lines counting %d", refused, lines, logged)
	}
	// 20x over: flood after FloodWindows seconds.
	start := now
	for i := 1; ; i++ {
		now = start.Add(time.Duration(i) * 5 * time.Millisecond)
		if l.Admit(now, 1) == Flood {
			break
		}
		if now.Sub(start) > 10*time.Second {
			t.Fatal("no flood verdict after 10s at 20x")
		}
	}
	if d := now.Sub(start); d < FloodWindows*time.Second || d > (FloodWindows+1)*time.Second {
		t.Fatalf("flood verdict after %v", d)
	}
}

func TestOverloadedReply(t *testing.T) {
	m := OverloadedReply([]byte(`"abc"`), Rate{Messages: 5})
	var v struct {
		ID    string `json:"id"`
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Body(), &v); err != nil || v.ID != "abc" || v.Error.Code != -32004 || v.Error.Message == "" {
		t.Fatalf("%s: %+v %v", m.Body(), v, err)
	}
}
