package webhookqueue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/webhookgate/caddy-openai-webhook/internal/cli"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "webhook-queue",
		Usage: "<command> [flags]",
		Short: "Show a running Caddy's webhook queues; list, retry or drop their dead letters",
		Long: `Talks to the admin endpoint of a running Caddy, found as caddy reload finds it:
--address, or the admin address in --config, or $CADDY_ADMIN, or localhost:2019
(a unix socket too). --queue names the queue (as status lists it) when
several run.`,
		CobraFunc: addCommands,
	})
}

// addCommands adds the subcommands of `caddy webhook-queue` to cmd.
func addCommands(cmd *cobra.Command) {
	status := &cobra.Command{
		Use:   "status",
		Short: "Each queue: messages by state, the oldest's age, the next due, and how its app fares",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return adminCall(cmd, http.MethodGet, "", nil)
		},
	}
	list := &cobra.Command{
		Use:   "list --state pending|scheduled|in_flight|dead [--limit N]",
		Short: "A queue's messages in a state: ids, attempts, next due, last error; never bodies",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			state, _ := cmd.Flags().GetString("state")
			limit, _ := cmd.Flags().GetInt("limit")
			if state == "" {
				return errors.New("--state: pending, scheduled, in_flight or dead is required")
			}
			return adminCall(cmd, http.MethodGet, "/list", url.Values{"state": {state}, "limit": {strconv.Itoa(limit)}})
		},
	}
	list.Flags().String("state", "", "pending, scheduled, in_flight or dead")
	list.Flags().Int("limit", 100, "the most messages listed, up to 1000")
	retry := &cobra.Command{
		Use:   "retry (--id ID | --all | --scheduled)",
		Short: "Make a dead letter, or the dead letters, due again; or every scheduled message due now",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			query, err := which(cmd, "--id, --all or --scheduled: say which messages to retry", "all", "scheduled")
			if err != nil {
				return err
			}
			return adminCall(cmd, http.MethodPost, "/retry", query)
		},
	}
	retry.Flags().String("id", "", "the dead letter, its id as list prints it")
	retry.Flags().Bool("all", false, "the dead letters, oldest first, while the queue has room under max_pending")
	retry.Flags().Bool("scheduled", false, "every message waiting for a retry: due now")
	drop := &cobra.Command{
		Use:   "drop (--id ID | --all)",
		Short: "Delete a dead letter, or all of them",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			query, err := which(cmd, "--id or --all: say which dead letters to drop", "all")
			if err != nil {
				return err
			}
			return adminCall(cmd, http.MethodPost, "/drop", query)
		},
	}
	drop.Flags().String("id", "", "the dead letter, its id as list prints it")
	drop.Flags().Bool("all", false, "every dead letter of the queue")
	compact := &cobra.Command{
		Use:   "compact",
		Short: "Give the space of delivered messages back to the system (the file store)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return adminCall(cmd, http.MethodPost, "/compact", nil)
		},
	}
	for _, sub := range []*cobra.Command{status, list, retry, drop, compact} {
		sub.Flags().String("address", "", "the admin endpoint (default: from --config, $CADDY_ADMIN, or localhost:2019)")
		sub.Flags().String("config", "", "the running Caddy's config file, to read its admin address from")
		sub.Flags().String("adapter", "", "the config file's adapter (default: caddyfile for a Caddyfile)")
		sub.Flags().String("queue", "", "the queue, when several run")
		cmd.AddCommand(sub)
	}
	cli.Parent(cmd)
}

// which reads --id and the boolean flags, exactly one of which must be
// given, as the admin API's query.
func which(cmd *cobra.Command, missing string, flags ...string) (url.Values, error) {
	var given []string
	query := url.Values{}
	if id, _ := cmd.Flags().GetString("id"); id != "" {
		given = append(given, "--id")
		query.Set("id", id)
	}
	for _, flag := range flags {
		if on, _ := cmd.Flags().GetBool(flag); on {
			given = append(given, "--"+flag)
			query.Set(flag, "true")
		}
	}
	switch len(given) {
	case 0:
		return nil, errors.New(missing)
	case 1:
		return query, nil
	}
	return nil, fmt.Errorf("%s: give only one", strings.Join(given, " and "))
}

// adminCall calls the admin API's /webhook-queue/queues+path with query
// (and --queue) and prints its answer, indented.
func adminCall(cmd *cobra.Command, method, path string, query url.Values) error {
	addressFlag, _ := cmd.Flags().GetString("address")
	configFlag, _ := cmd.Flags().GetString("config")
	adapterFlag, _ := cmd.Flags().GetString("adapter")
	address, err := caddycmd.DetermineAdminAPIAddress(addressFlag, nil, configFlag, adapterFlag)
	if err != nil {
		return fmt.Errorf("finding the admin endpoint: %w", err)
	}
	if query == nil {
		query = url.Values{}
	}
	if name, _ := cmd.Flags().GetString("queue"); name != "" {
		query.Set("queue", name)
	}
	uri := "/webhook-queue/queues" + path
	if len(query) > 0 {
		uri += "?" + query.Encode()
	}
	resp, err := caddycmd.AdminAPIRequest(address, method, uri, nil, nil)
	if err != nil {
		if strings.HasPrefix(err.Error(), "caddy responded with error") {
			return err // Caddy answered: the request, not the address, is at fault
		}
		return fmt.Errorf("%w: is Caddy running, with its admin endpoint at %s? (--address, --config or $CADDY_ADMIN say where it is)", err, address)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, answer, "", "  ") != nil {
		pretty.Reset()
		pretty.Write(answer)
	}
	_, err = fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(pretty.String()))
	return err
}
