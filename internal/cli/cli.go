// Package cli holds what the plugin's commands (caddy openai-webhook, caddy
// webhook-queue) share: commands that refuse what they do not know, naming
// the choices, and never quote an argument that could be a secret.
package cli

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// Parent makes cmd, a command of subcommands, fail when given no
// subcommand or one it does not know, naming the choices (cobra would
// print the help and exit 0).
func Parent(cmd *cobra.Command) {
	cmd.SuggestionsMinimumDistance = 2
	// A mistyped command's flags are its own: `dead --address …` should
	// say that dead is not a command, not that --address is not a flag.
	cmd.FParseErrWhitelist.UnknownFlags = true
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		return UnknownChoice(cmd, "a command", args[0], subcommandNames(cmd))
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return fmt.Errorf("%s needs a command: %s (--help says what each does)", cmd.CommandPath(), strings.Join(subcommandNames(cmd), ", "))
	}
}

// subcommandNames lists cmd's subcommands, as --help does.
func subcommandNames(cmd *cobra.Command) []string {
	var names []string
	for _, c := range cmd.Commands() {
		// cobra adds completion to a root command: not one of ours.
		if c.IsAvailableCommand() && c.Name() != "completion" {
			names = append(names, c.Name())
		}
	}
	return names
}

// UnknownChoice is the error for an argument that is none of choices: it
// quotes the argument only when it looks like a mistyped word, since a
// misplaced argument can be a secret.
func UnknownChoice(cmd *cobra.Command, what, arg string, choices []string) error {
	shown := "an argument"
	if commandWord.MatchString(arg) {
		shown = strconv.Quote(arg)
	}
	msg := fmt.Sprintf("%s: %s is not %s; one of %s", cmd.CommandPath(), shown, what, strings.Join(choices, ", "))
	if suggestions := cmd.SuggestionsFor(arg); len(suggestions) > 0 && shown != "an argument" {
		msg += "; did you mean " + strings.Join(suggestions, " or ") + "?"
	}
	return errors.New(msg)
}

// commandWord is what a mistyped command or action looks like.
var commandWord = regexp.MustCompile(`^[a-z][a-z-]{0,19}$`)

// NoArgs refuses arguments to a command that takes none, without quoting
// them (a misplaced argument can be a secret).
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s takes no arguments, but was given %d; its input comes from flags (--help lists them)", cmd.CommandPath(), len(args))
	}
	return nil
}
