// Package web holds the dashboard's and the browser terminal's static files
// (HTML, CSS, JavaScript and the vendored xterm.js), embedded with go:embed
// so the daemon serves them with no build step and no network. It decides
// nothing: the listener's HTTP layer (package loop) routes, authenticates
// and sets the Content-Security-Policy. Everything here is immutable after
// init and safe from any goroutine.
package web

import (
	"embed"
	"io/fs"
	"mime"
	"path"
	"strings"
)

//go:embed index.html login.html terminal.html static vendor
var files embed.FS

// Asset is one embedded file.
type Asset struct {
	Body []byte
	Type string // Content-Type
}

var assets = map[string]Asset{}

func init() {
	err := fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		assets[p] = Asset{Body: b, Type: contentType(p)}
		return nil
	})
	if err != nil {
		panic("web: embedded files unreadable: " + err.Error())
	}
}

func contentType(p string) string {
	switch path.Ext(p) {
	case ".mjs", ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".html":
		return "text/html; charset=utf-8"
	case "", ".txt":
		return "text/plain; charset=utf-8"
	}
	if t := mime.TypeByExtension(path.Ext(p)); t != "" {
		return t
	}
	return "application/octet-stream"
}

// Lookup returns the embedded file at name ("index.html",
// "static/app.js", "vendor/xterm/xterm.mjs"...).
func Lookup(name string) (Asset, bool) {
	name = strings.TrimPrefix(name, "/")
	a, ok := assets[name]
	return a, ok
}
