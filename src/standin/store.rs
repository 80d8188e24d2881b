//! The stand-in's workspace content and everything agents wrote into it, in memory.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A file of the workspace's tree.
#[derive(Clone, Debug, Serialize)]
pub struct FileNode {
    pub id: String,
    pub path: String,
    pub kind: &'static str,
    #[serde(skip)]
    pub content: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Artifact {
    pub id: String,
    pub path: String,
    pub title: String,
    pub text: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proposal {
    pub id: String,
    pub node_id: String,
    pub content: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    pub idempotency_key: String,
    pub event_type: String,
    pub occurred_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewArtifact {
    pub title: String,
    pub text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProposal {
    pub content: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    pub idempotency_key: String,
    pub event_type: String,
    pub occurred_at: String,
}

/// The workspace as the stand-in serves it.
pub struct Store {
    pub workspace: String,
    files: Vec<FileNode>,
    artifacts: Vec<Artifact>,
    proposals: Vec<Proposal>,
    events: Vec<Event>,
    events_by_key: HashMap<String, usize>,
}

/// The result of logging an event: its id, and whether the idempotency key was new.
pub struct EventOutcome {
    pub id: String,
    pub duplicate: bool,
}

impl Store {
    /// Creates a small demo workspace with notes, memory and two skills.
    pub fn demo(workspace: &str) -> Store {
        let file = |id: &str, path: &str, content: &str| FileNode {
            id: id.into(),
            path: path.into(),
            kind: "file",
            content: content.into(),
        };
        let files = vec![
            file(
                "fn_readme",
                "README.md",
                "# Demo workspace\n\nServed by the agent-access-proxy stand-in.\n",
            ),
            file(
                "fn_agent_notes",
                "agents/notes.md",
                "# Operating notes\n\nWrite results as artifacts; propose memory edits.\n",
            ),
            file(
                "fn_memory",
                "memory/notes.md",
                "# Memory\n\n- The quarterly report is due on Friday.\n",
            ),
            file(
                "fn_skill_summarize",
                "skills/summarize.md",
                "# Summarize\n\nSummarize a document in five bullet points.\n",
            ),
            file(
                "fn_skill_report",
                "skills/report.md",
                "# Report\n\nWrite a status report for the week.\n",
            ),
        ];

        Store {
            workspace: workspace.to_owned(),
            files,
            artifacts: Vec::new(),
            proposals: Vec::new(),
            events: Vec::new(),
            events_by_key: HashMap::new(),
        }
    }

    pub fn environment(&self, key_id: &str) -> Value {
        json!({
            "workspace": { "id": self.workspace, "name": "Demo workspace" },
            "key": { "id": key_id },
            "notes": "agents/notes.md",
            "server": "agent-access-proxy stand-in",
        })
    }

    pub fn prompts(&self) -> Value {
        let prompts: Vec<Value> = self
            .files
            .iter()
            .filter(|node| node.path.starts_with("skills/") && node.path.ends_with(".md"))
            .map(|node| {
                let name = node.path.trim_start_matches("skills/").trim_end_matches(".md");
                let description = node.content.lines().nth(2).unwrap_or_default();
                json!({ "name": name, "path": node.path, "nodeId": node.id, "description": description })
            })
            .collect();
        json!({ "prompts": prompts })
    }

    /// Lists files and artifacts; artifacts appear under `artifacts/`.
    pub fn file_tree(&self) -> Value {
        let mut nodes: Vec<Value> = self.files.iter().map(|node| json!(node)).collect();
        nodes.extend(self.artifacts.iter().map(
            |artifact| json!({ "id": artifact.id, "path": artifact.path, "kind": "artifact" }),
        ));
        json!({ "nodes": nodes })
    }

    pub fn file(&self, node_id: &str) -> Option<Value> {
        if let Some(node) = self.files.iter().find(|node| node.id == node_id) {
            return Some(json!({ "id": node.id, "path": node.path, "content": node.content }));
        }
        self.artifacts
            .iter()
            .find(|artifact| artifact.id == node_id)
            .map(|artifact| json!({ "id": artifact.id, "path": artifact.path, "content": artifact.text }))
    }

    pub fn add_artifact(&mut self, new: NewArtifact) -> Artifact {
        let id = format!("art_{}", self.artifacts.len() + 1);
        let path = format!("artifacts/{}-{}.md", id, slug(&new.title));
        let artifact = Artifact {
            id,
            path,
            title: new.title,
            text: new.text,
        };
        self.artifacts.push(artifact.clone());
        artifact
    }

    /// Stages a proposal for an existing file; `None` when the node does not exist.
    pub fn add_proposal(&mut self, node_id: &str, new: NewProposal) -> Option<Proposal> {
        self.files.iter().find(|node| node.id == node_id)?;
        let proposal = Proposal {
            id: format!("prop_{}", self.proposals.len() + 1),
            node_id: node_id.to_owned(),
            content: new.content,
            status: "pending",
        };
        self.proposals.push(proposal.clone());
        Some(proposal)
    }

    /// Logs an event once per idempotency key.
    pub fn add_event(&mut self, new: NewEvent) -> EventOutcome {
        if let Some(&index) = self.events_by_key.get(&new.idempotency_key) {
            return EventOutcome {
                id: self.events[index].id.clone(),
                duplicate: true,
            };
        }

        let id = format!("evt_{}", self.events.len() + 1);
        self.events_by_key
            .insert(new.idempotency_key.clone(), self.events.len());
        self.events.push(Event {
            id: id.clone(),
            idempotency_key: new.idempotency_key,
            event_type: new.event_type,
            occurred_at: new.occurred_at,
        });
        EventOutcome {
            id,
            duplicate: false,
        }
    }

    pub fn artifacts(&self) -> &[Artifact] {
        &self.artifacts
    }

    pub fn proposals(&self) -> &[Proposal] {
        &self.proposals
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Everything agents wrote, for the inspection endpoint.
    pub fn written(&self) -> Value {
        json!({ "artifacts": self.artifacts, "proposals": self.proposals, "events": self.events })
    }
}

fn slug(title: &str) -> String {
    let mut slug = String::new();
    for character in title.chars().flat_map(char::to_lowercase) {
        if character.is_ascii_alphanumeric() {
            slug.push(character);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    if slug.is_empty() {
        "untitled".to_owned()
    } else {
        slug.chars().take(48).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_deduplicated_by_idempotency_key() {
        let mut store = Store::demo("ws");
        let event = |key: &str| NewEvent {
            idempotency_key: key.into(),
            event_type: "agent.run.completed".into(),
            occurred_at: "2026-01-01T00:00:00Z".into(),
        };

        let first = store.add_event(event("run-1:done"));
        let again = store.add_event(event("run-1:done"));
        let other = store.add_event(event("run-2:done"));

        assert!(!first.duplicate);
        assert!(again.duplicate);
        assert_eq!(again.id, first.id);
        assert!(!other.duplicate);
        assert_eq!(store.events().len(), 2);
    }

    #[test]
    fn artifacts_appear_in_file_tree() {
        let mut store = Store::demo("ws");
        let artifact = store.add_artifact(NewArtifact {
            title: "Q3 Summary!".into(),
            text: "# Q3".into(),
        });

        assert_eq!(artifact.path, "artifacts/art_1-q3-summary.md");
        assert!(store
            .file_tree()
            .to_string()
            .contains("artifacts/art_1-q3-summary.md"));
        assert_eq!(store.file(&artifact.id).unwrap()["content"], "# Q3");
    }
}
