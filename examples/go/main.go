// Command agent is an example agent: one full run against the Agent Access API through
// agent-access-proxy.
//
// It reads the environment, the prompts and the file tree, reads one file, writes an
// artifact, proposes an edit to the file and logs a completion event. It sends plain HTTP
// to the proxy, which signs each request, so this program never has the key or its secret.
//
// Settings (environment variables):
//
//	AGENT_ACCESS_BASE_URL   the proxy, default http://127.0.0.1:8080
//	AGENT_ACCESS_WORKSPACE  workspace id, default ws_demo
//	AGENT_RUN_ID            id of this run, used in the idempotency key; default: generated
//
// Standard library only; Go 1.19 or later.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

type workspaceInfo struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type environmentResponse struct {
	Workspace workspaceInfo `json:"workspace"`
}

type prompt struct {
	Name        string `json:"name"`
	Path        string `json:"path"`
	Description string `json:"description"`
}

type promptsResponse struct {
	Prompts []prompt `json:"prompts"`
}

type node struct {
	ID   string `json:"id"`
	Path string `json:"path"`
	Kind string `json:"kind"`
}

type fileTreeResponse struct {
	Nodes []node `json:"nodes"`
}

type fileResponse struct {
	ID      string `json:"id"`
	Path    string `json:"path"`
	Content string `json:"content"`
}

type artifactResponse struct {
	ID   string `json:"id"`
	Path string `json:"path"`
}

type proposalResponse struct {
	ID     string `json:"id"`
	NodeID string `json:"nodeId"`
	Status string `json:"status"`
}

type eventRequest struct {
	IdempotencyKey string `json:"idempotencyKey"`
	EventType      string `json:"eventType"`
	OccurredAt     string `json:"occurredAt"`
}

type eventResponse struct {
	ID        string `json:"id"`
	Duplicate bool   `json:"duplicate"`
}

// client sends requests for one workspace to the proxy.
type client struct {
	baseURL    string
	workspace  string
	httpClient *http.Client
}

// call sends one request, decodes the JSON response into out and returns the status code.
func (c *client) call(method, path string, body, out any) (int, error) {
	url := fmt.Sprintf("%s/agent-api/v1/workspaces/%s%s", c.baseURL, c.workspace, path)
	var reader io.Reader
	if body != nil {
		encoded, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		reader = bytes.NewReader(encoded)
	}
	request, err := http.NewRequest(method, url, reader)
	if err != nil {
		return 0, err
	}
	request.Header.Set("accept", "application/json")
	if body != nil {
		request.Header.Set("content-type", "application/json")
	}

	response, err := c.httpClient.Do(request)
	if err != nil {
		return 0, fmt.Errorf("%s %s failed: cannot reach the proxy at %s: %w", method, path, c.baseURL, err)
	}
	defer response.Body.Close()
	payload, err := io.ReadAll(response.Body)
	if err != nil {
		return 0, fmt.Errorf("%s %s: reading the response failed: %w", method, path, err)
	}
	if response.StatusCode < 200 || response.StatusCode > 299 {
		// The proxy marks the errors it generates itself (denied route, upstream down)
		// with this header, so they can be distinguished from the API's own errors.
		source := "API error"
		if origin := response.Header.Get("x-agent-access-proxy-error"); origin != "" {
			source = "proxy error " + origin
		}
		return response.StatusCode, fmt.Errorf("%s %s failed with %d (%s): %s", method, path, response.StatusCode, source, payload)
	}
	if err := json.Unmarshal(payload, out); err != nil {
		return response.StatusCode, fmt.Errorf("%s %s: invalid JSON in the response: %w", method, path, err)
	}
	return response.StatusCode, nil
}

func getenv(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func newRunID() string {
	random := make([]byte, 4)
	if _, err := rand.Read(random); err != nil {
		panic(err)
	}
	return fmt.Sprintf("go-%d-%s", time.Now().Unix(), hex.EncodeToString(random))
}

func run() error {
	api := &client{
		baseURL:    strings.TrimRight(getenv("AGENT_ACCESS_BASE_URL", "http://127.0.0.1:8080"), "/"),
		workspace:  getenv("AGENT_ACCESS_WORKSPACE", "ws_demo"),
		httpClient: &http.Client{Timeout: 30 * time.Second},
	}
	runID := getenv("AGENT_RUN_ID", newRunID())
	fmt.Printf("run %s: workspace %s through %s\n", runID, api.workspace, api.baseURL)

	var environment environmentResponse
	if _, err := api.call("GET", "/environment", nil, &environment); err != nil {
		return err
	}
	fmt.Printf("environment: workspace '%s' (%s)\n", environment.Workspace.Name, environment.Workspace.ID)

	var prompts promptsResponse
	if _, err := api.call("GET", "/prompts", nil, &prompts); err != nil {
		return err
	}
	promptNames := make([]string, 0, len(prompts.Prompts))
	for _, p := range prompts.Prompts {
		promptNames = append(promptNames, p.Name)
	}
	names := strings.Join(promptNames, ", ")
	fmt.Printf("prompts: %d (%s)\n", len(prompts.Prompts), names)

	var tree fileTreeResponse
	if _, err := api.call("GET", "/file-tree", nil, &tree); err != nil {
		return err
	}
	var files []node
	for _, n := range tree.Nodes {
		if n.Kind == "file" {
			files = append(files, n)
		}
	}
	fmt.Printf("file tree: %d nodes, %d files\n", len(tree.Nodes), len(files))
	if len(files) == 0 {
		return errors.New("the workspace has no file to read")
	}
	// Prefer the memory file, which is what an agent would propose edits to.
	target := files[0]
	for _, n := range files {
		if strings.HasPrefix(n.Path, "memory/") {
			target = n
			break
		}
	}

	var file fileResponse
	if _, err := api.call("GET", "/files/"+target.ID, nil, &file); err != nil {
		return err
	}
	fmt.Printf("read %s: %d characters\n", file.Path, len(file.Content))

	artifactText := fmt.Sprintf("# Run %s\n\n- Workspace: %s\n- Prompts available: %s\n- Read `%s` (%d characters)\n",
		runID, environment.Workspace.Name, names, file.Path, len(file.Content))
	var artifact artifactResponse
	artifactRequest := map[string]string{"title": "Go agent run " + runID, "text": artifactText}
	if _, err := api.call("POST", "/artifacts", artifactRequest, &artifact); err != nil {
		return err
	}
	fmt.Printf("artifact written: %s at %s\n", artifact.ID, artifact.Path)

	newContent := strings.TrimRight(file.Content, "\n") + "\n- Reviewed by the Go example agent in run " + runID + ".\n"
	var proposal proposalResponse
	if _, err := api.call("POST", "/files/"+target.ID+"/proposals", map[string]string{"content": newContent}, &proposal); err != nil {
		return err
	}
	fmt.Printf("proposal for %s: %s (%s)\n", file.Path, proposal.ID, proposal.Status)

	event := eventRequest{
		IdempotencyKey: runID + ":done",
		EventType:      "agent.run.completed",
		OccurredAt:     time.Now().UTC().Format(time.RFC3339),
	}
	var logged eventResponse
	status, err := api.call("POST", "/events", event, &logged)
	if err != nil {
		return err
	}
	fmt.Printf("event logged: %s (status %d, duplicate %t)\n", logged.ID, status, logged.Duplicate)
	// A retry with the same idempotency key is safe: the API returns the first event.
	var again eventResponse
	status, err = api.call("POST", "/events", event, &again)
	if err != nil {
		return err
	}
	fmt.Printf("event retried: %s (status %d, duplicate %t)\n", again.ID, status, again.Duplicate)

	if _, err := api.call("GET", "/file-tree", nil, &tree); err != nil {
		return err
	}
	landed := "NOT FOUND"
	for _, n := range tree.Nodes {
		if n.ID == artifact.ID {
			landed = n.Path
		}
	}
	fmt.Printf("landed: artifact %s in the file tree at %s, proposal %s, event %s\n", artifact.ID, landed, proposal.ID, logged.ID)
	if landed == "NOT FOUND" {
		return errors.New("the artifact is missing from the file tree")
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(1)
	}
}
