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
		Short: "Each queue's messages by state, as JSON",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return adminCall(cmd, http.MethodGet, "", nil)
		},
	}
	dead := &cobra.Command{
		Use:   "dead [--limit N]",
		Short: "A queue's dead letters: ids, times, attempts; never bodies",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			limit, _ := cmd.Flags().GetInt("limit")
			return adminCall(cmd, http.MethodGet, "/dead", url.Values{"limit": {strconv.Itoa(limit)}})
		},
	}
	dead.Flags().Int("limit", 100, "the most dead letters listed")
	retry := &cobra.Command{
		Use:   "retry (--id ID | --all)",
		Short: "Make a dead letter, or every one, due again with a new round of retries",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, _ := cmd.Flags().GetString("id")
			all, _ := cmd.Flags().GetBool("all")
			switch {
			case id != "" && all:
				return errors.New("--id and --all: give one or the other")
			case all:
				return adminCall(cmd, http.MethodPost, "/retry", url.Values{"all": {"true"}})
			case id != "":
				return adminCall(cmd, http.MethodPost, "/retry", url.Values{"id": {id}})
			}
			return errors.New("--id or --all: say which dead letters to retry")
		},
	}
	retry.Flags().String("id", "", "the dead letter, its id as dead prints it")
	retry.Flags().Bool("all", false, "every dead letter of the queue")
	drop := &cobra.Command{
		Use:   "drop --id ID",
		Short: "Delete a dead letter",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, _ := cmd.Flags().GetString("id")
			if id == "" {
				return errors.New("--id: the dead letter to drop is required")
			}
			return adminCall(cmd, http.MethodPost, "/drop", url.Values{"id": {id}})
		},
	}
	drop.Flags().String("id", "", "the dead letter, its id as dead prints it")
	for _, sub := range []*cobra.Command{status, dead, retry, drop} {
		sub.Flags().String("address", "", "the admin endpoint (default: from --config, $CADDY_ADMIN, or localhost:2019)")
		sub.Flags().String("config", "", "the running Caddy's config file, to read its admin address from")
		sub.Flags().String("adapter", "", "the config file's adapter (default: caddyfile for a Caddyfile)")
		sub.Flags().String("queue", "", "the queue, when several run")
		cmd.AddCommand(sub)
	}
	cli.Parent(cmd)
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
