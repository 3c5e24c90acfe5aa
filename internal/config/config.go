// Package config makes flags, AGENTBRIDGE_* environment variables and a
// config file mean the same thing: every setting is a flag, and the other
// two sources only supply values for flags not given on the command line.
// Precedence: command line > environment > config file > default.
//
// The config file holds one setting per line, `name value` or
// `name = value`, where name is the flag's name; '#' starts a comment.
// Repeatable flags may appear on several lines.
package config

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// List is a repeatable string flag.
type List []string

func (l *List) String() string     { return strings.Join(*l, ",") }
func (l *List) Set(v string) error { *l = append(*l, v); return nil }

// EnvName is the environment variable for a flag: AGENTBRIDGE_ + upper snake.
func EnvName(flagName string) string {
	return "AGENTBRIDGE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Apply fills flags of fs that were not set on the command line from the
// environment and then from the file named by the flag configFlag (if any).
// Errors name the source and the bad value.
func Apply(fs *flag.FlagSet, configFlag string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || set[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("invalid value %q for %s: %v", v, EnvName(f.Name), e)
				return
			}
			set[f.Name] = true
		}
	})
	if err != nil {
		return err
	}
	if configFlag == "" {
		return nil
	}
	cf := fs.Lookup(configFlag)
	if cf == nil || cf.Value.String() == "" {
		return nil
	}
	return applyFile(fs, cf.Value.String(), set)
}

func applyFile(fs *flag.FlagSet, path string, set map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		name, value := text, ""
		if i := strings.IndexAny(text, " \t="); i >= 0 {
			name, value = text[:i], strings.TrimSpace(text[i:])
			value = strings.TrimSpace(strings.TrimPrefix(value, "="))
		}
		name = strings.TrimPrefix(strings.TrimPrefix(name, "-"), "-")
		value = strings.Trim(value, `"`)
		fl := fs.Lookup(name)
		if fl == nil {
			return fmt.Errorf("%s:%d: unknown setting %q", path, line, name)
		}
		if set[name] {
			continue
		}
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("%s:%d: invalid value %q for %s: %v", path, line, value, name, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// ErrHelp is returned when -h was asked for.
var ErrHelp = flag.ErrHelp

// IsHelp reports whether err means the user asked for help.
func IsHelp(err error) bool { return errors.Is(err, flag.ErrHelp) }

// Choice is a string flag restricted to a set of values, so a bad value is
// refused where it is set (command line, environment or file) and the error
// names its source.
type Choice struct {
	Value   string
	Allowed []string
}

func (c *Choice) String() string { return c.Value }

func (c *Choice) Set(v string) error {
	for _, a := range c.Allowed {
		if v == a {
			c.Value = v
			return nil
		}
	}
	return fmt.Errorf("want one of %s", strings.Join(c.Allowed, ", "))
}
