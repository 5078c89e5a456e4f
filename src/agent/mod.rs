//! Agents turn a chat message into proposed tool calls. Nothing runs until the user approves a
//! proposal; the agent only proposes. The default [`ShellAgent`] proposes running the message
//! as a shell command; an LLM-backed agent plugs in behind the same [`Agent`] trait.

use async_trait::async_trait;

/// A tool call the agent wants to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolProposal {
    /// Run `command` with `sh -c` in the session's sandbox.
    Exec { command: String },
}

impl ToolProposal {
    /// The tool's name on the wire.
    pub fn tool(&self) -> &'static str {
        match self {
            ToolProposal::Exec { .. } => "exec",
        }
    }
}

/// Why an agent could not answer.
#[derive(Debug, thiserror::Error)]
#[error("agent failed: {0}")]
pub struct AgentError(pub String);

/// Something that reads chat text and proposes tool calls.
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Proposals for `text`; an empty list means nothing to run.
    async fn propose(&self, text: &str) -> Result<Vec<ToolProposal>, AgentError>;
}

/// The default agent: the message is the shell command to run.
pub struct ShellAgent;

#[async_trait]
impl Agent for ShellAgent {
    async fn propose(&self, text: &str) -> Result<Vec<ToolProposal>, AgentError> {
        Ok(vec![ToolProposal::Exec {
            command: text.trim().to_string(),
        }])
    }
}
