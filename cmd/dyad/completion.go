package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// command is one dyad command as the completion scripts know it: its
// flags, and which of them take a file. A command added to main's switch
// belongs here too (TestCompletionCoversUsage compares with the usage).
type command struct {
	name  string
	what  string
	flags []string // without dashes
	files []string // flags whose value is a file or folder
	args  []string // fixed first arguments (audit verify, completion SHELL)
}

var commands = []command{
	{name: "keygen", what: "make this site's identity", flags: []string{"out"}, files: []string{"out"}},
	{name: "install-key", what: "copy a delivered key to the owner-only file dyad reads", flags: []string{"from", "to"}, files: []string{"from", "to"}},
	{name: "check", what: "validate a configuration and its key file", flags: []string{"config"}, files: []string{"config"}},
	{name: "run", what: "run the daemon", flags: []string{"config", "accept-broken-journal"}, files: []string{"config"}},
	{name: "invite", what: "print a one-time token that pairs a partner with this site",
		flags: []string{"config", "peer", "service", "endpoint", "expires", "wait", "print", "json"}, files: []string{"config"}},
	{name: "join", what: "pair with the site that printed a token", flags: []string{"config", "name", "forward", "print", "json"}, files: []string{"config"}},
	{name: "revoke", what: "unpin a peer and cut its tunnels now", flags: []string{"config", "json"}, files: []string{"config"}},
	{name: "rotate", what: "make a new identity and hand it to every peer", flags: []string{"config", "overlap", "json"}, files: []string{"config"}},
	{name: "status", what: "each peer's tunnels", flags: []string{"config", "json", "via"}, files: []string{"config"}},
	{name: "ping", what: "probe a peer (and a service)", flags: []string{"config", "endpoint", "timeout"}, files: []string{"config"}},
	{name: "audit", what: "check the audit journal", args: []string{"verify"},
		flags: []string{"config", "journal", "public-key", "site", "anchor"}, files: []string{"config", "journal", "anchor"}},
	{name: "report", what: "write DORA / OWASP evidence from the journal",
		flags: []string{"config", "journal", "framework", "since", "from", "to", "format", "out", "outage-min"}, files: []string{"config", "journal", "out"}},
	{name: "version", what: "show the build and its cryptography"},
	{name: "completion", what: "print a shell completion script", args: []string{"bash", "zsh", "fish"}},
	{name: "help", what: "show the usage"},
}

// writeCompletion prints the completion script for shell.
func writeCompletion(out io.Writer, shell string) error {
	switch shell {
	case "bash":
		writeBash(out)
	case "zsh":
		writeZsh(out)
	case "fish":
		writeFish(out)
	default:
		return fmt.Errorf("completion: unknown shell %q (want bash, zsh or fish)", shell)
	}
	return nil
}

func names() string {
	var n []string
	for _, c := range commands {
		n = append(n, c.name)
	}
	return strings.Join(n, " ")
}

func dashed(flags []string) string {
	var out []string
	for _, f := range flags {
		out = append(out, "--"+f)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func writeBash(out io.Writer) {
	fmt.Fprintf(out, `# bash completion for dyad: source it, or install it as
# /usr/share/bash-completion/completions/dyad (make install does).
_dyad() {
	local cur prev cmd
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	if [ "$COMP_CWORD" -eq 1 ]; then
		COMPREPLY=($(compgen -W "%s --version --help" -- "$cur"))
		return
	fi
	cmd=${COMP_WORDS[1]}
	case "$cmd:$prev" in
`, names())
	for _, c := range commands {
		for _, f := range c.files {
			fmt.Fprintf(out, "\t%s:--%s) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n", c.name, f)
		}
	}
	fmt.Fprintf(out, "\tesac\n\tcase $cmd in\n")
	for _, c := range commands {
		words := dashed(c.flags)
		if len(c.args) > 0 {
			fmt.Fprintf(out, "\t%s) if [ \"$COMP_CWORD\" -eq 2 ]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); return; fi ;;\n", c.name, strings.Join(c.args, " "))
		}
		if words != "" {
			fmt.Fprintf(out, "\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", c.name, words)
		}
	}
	fmt.Fprintf(out, "\tesac\n}\ncomplete -F _dyad dyad\n")
}

func writeZsh(out io.Writer) {
	fmt.Fprintf(out, "#compdef dyad\n# zsh completion for dyad: install it as _dyad in a folder of $fpath\n# (make install: $PREFIX/share/zsh/site-functions/_dyad).\n")
	fmt.Fprintf(out, "_dyad() {\n\tlocal -a cmds\n\tcmds=(\n")
	for _, c := range commands {
		fmt.Fprintf(out, "\t\t'%s:%s'\n", c.name, strings.ReplaceAll(c.what, "'", `'\''`))
	}
	fmt.Fprintf(out, "\t)\n\tif (( CURRENT == 2 )); then\n\t\t_describe 'command' cmds\n\t\treturn\n\tfi\n\tcase ${words[2]} in\n")
	for _, c := range commands {
		var specs []string
		for _, f := range c.flags {
			spec := "'--" + f + "[]"
			if contains(c.files, f) {
				spec += ":file:_files'"
			} else if f == "accept-broken-journal" {
				spec += "'"
			} else {
				spec += ":value:'"
			}
			specs = append(specs, spec)
		}
		if len(c.args) > 0 {
			specs = append(specs, "'1:argument:("+strings.Join(c.args, " ")+")'")
		}
		if len(specs) == 0 {
			continue
		}
		fmt.Fprintf(out, "\t%s) _arguments %s ;;\n", c.name, strings.Join(specs, " "))
	}
	// Autoloaded from $fpath the file is _dyad's body: complete now;
	// sourced, register the function.
	fmt.Fprintf(out, "\tesac\n}\nif [ \"$funcstack[1]\" = \"_dyad\" ]; then\n\t_dyad \"$@\"\nelse\n\tcompdef _dyad dyad\nfi\n")
}

func writeFish(out io.Writer) {
	fmt.Fprintf(out, "# fish completion for dyad: install it as\n# ~/.config/fish/completions/dyad.fish (make install: vendor_completions.d).\n")
	fmt.Fprintf(out, "complete -c dyad -f\n")
	for _, c := range commands {
		fmt.Fprintf(out, "complete -c dyad -n '__fish_use_subcommand' -a %s -d %q\n", c.name, c.what)
	}
	for _, c := range commands {
		for _, a := range c.args {
			fmt.Fprintf(out, "complete -c dyad -n '__fish_seen_subcommand_from %s' -a %s\n", c.name, a)
		}
		for _, f := range c.flags {
			extra := ""
			if contains(c.files, f) {
				extra = " -r -F"
			}
			fmt.Fprintf(out, "complete -c dyad -n '__fish_seen_subcommand_from %s' -l %s%s\n", c.name, f, extra)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
