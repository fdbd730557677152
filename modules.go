package openaiwebhook

// The plugin's other modules, registered with Caddy wherever this package
// is: xcaddy build --with github.com/webhookgate/caddy-openai-webhook
// imports this package alone.
import (
	_ "github.com/webhookgate/caddy-openai-webhook/queuestore"
	_ "github.com/webhookgate/caddy-openai-webhook/replaystore"
	_ "github.com/webhookgate/caddy-openai-webhook/webhookqueue"
)
