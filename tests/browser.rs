//! The chat page in real headless Chromium (Debian's `chromium` and `chromium-driver`, over
//! WebDriver): open it, send a message, approve the proposed command, see its output stream
//! into the terminal pane, run a command directly, and save a screenshot to
//! `target/browser-chat.png` for a person to look at.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium_binary() -> String {
    for candidate in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(candidate).exists() {
            return candidate.to_string();
        }
    }
    panic!("no chromium found (Debian package chromium; scripts/test installs it)");
}

async fn wait_text(client: &fantoccini::Client, css: &str, needle: &str) -> String {
    within(60, &format!("{css} to contain {needle:?}"), async {
        loop {
            if let Ok(el) = client.find(Locator::Css(css)).await
                && let Ok(text) = el.text().await
                && text.contains(needle)
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// Types `text` into the input `input` and clicks the `button`.
async fn type_and_send(client: &fantoccini::Client, input: &str, button: &str, text: &str) {
    let field = client.find(Locator::Css(input)).await.expect("input");
    field.send_keys(text).await.expect("typing");
    let send = client.find(Locator::Css(button)).await.expect("button");
    send.click().await.expect("click");
}

/// chromedriver and a headless Chromium session on it; the driver is stopped when dropped.
async fn browser() -> (fantoccini::Client, Driver) {
    let port = free_port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian package chromium-driver)"),
    );
    within(20, "chromedriver up", async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium_binary(),
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,800"]
        }),
    );
    let client = within(60, "webdriver session", async {
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("webdriver session")
    })
    .await;

    (client, driver)
}

/// Waits until the page shows a session (its sandbox pill is filled in).
/// The second element matching `css`, once there are two (the second proposal's button).
async fn second_button(
    client: &fantoccini::Client,
    css: &str,
    what: &str,
) -> fantoccini::elements::Element {
    within(30, what, async {
        loop {
            let buttons = client.find_all(Locator::Css(css)).await.unwrap();
            if buttons.len() == 2 {
                return buttons.into_iter().nth(1).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

async fn wait_session(client: &fantoccini::Client) {
    within(30, "session shown", async {
        loop {
            let t = client
                .find(Locator::Css("#sandbox"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if !t.ends_with('–') {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_sends_approves_and_streams_output_in_chromium() {
    let instance = unique_instance("browser");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_POOL_MIN_IDLE", "1")]).await;

    let (client, _driver) = browser().await;
    let url = format!("http://{}/", service.addr);
    client.goto(&url).await.expect("page loads");
    wait_session(&client).await;
    wait_text(&client, "#conn", "connected").await;

    // Chat: the agent proposes; the user approves; the output streams into the terminal.
    type_and_send(
        &client,
        "#chat-input",
        "#chat-form button",
        "for i in 1 2 3; do echo hello-from-browser-$i; done; id -un",
    )
    .await;
    let approve = client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(".proposal button.approve"))
        .await
        .expect("approve button");
    let proposal = wait_text(&client, ".proposal code", "hello-from-browser").await;
    assert!(proposal.contains("id -un"), "{proposal}");
    approve.click().await.unwrap();
    let terminal = wait_text(&client, "#terminal", "hello-from-browser-3").await;
    assert!(
        terminal
            .contains("hello-from-browser-1\nhello-from-browser-2\nhello-from-browser-3\nsandbox"),
        "{terminal}"
    );
    wait_text(&client, ".proposal .status", "ok, exit 0").await;

    // A rejected proposal runs nothing.
    type_and_send(
        &client,
        "#chat-input",
        "#chat-form button",
        "touch /workspace/should-not-exist",
    )
    .await;
    let reject = second_button(&client, ".proposal button.reject", "second proposal").await;
    reject.click().await.unwrap();
    wait_text(&client, "#chat", "rejected").await;

    // A command run directly.
    type_and_send(
        &client,
        "#exec-input",
        "#exec-form button",
        "pwd; ls -A /workspace | wc -l",
    )
    .await;
    let terminal = wait_text(&client, "#terminal", "/workspace\n0\n").await;
    assert!(terminal.contains("exit 0"), "{terminal}");

    let png = client.screenshot().await.expect("screenshot");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-chat.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    assert!(png.len() > 10_000, "a real picture");

    client.close().await.unwrap();
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

/// With authentication on, the page without a token says `unauthorized`; opened once as
/// `/?token=<jwt>` it connects, drops the token from the address, and keeps it for the tab:
/// a reload (plain `/`) resumes the same session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_passes_a_token_from_its_address_and_keeps_it_for_the_tab() {
    const SECRET: &str = "the-test-secret-of-at-least-32-bytes";
    let instance = unique_instance("browser-auth");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_POOL_MIN_IDLE", "1"),
            ("SANDPOOL_AUTH_HS256_SECRET", SECRET),
        ],
    )
    .await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": sandpool::session::now_ms() / 1000 + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (client, _driver) = browser().await;
    let url = format!("http://{}/", service.addr);

    client.goto(&url).await.expect("page loads");
    let chat = wait_text(&client, "#chat", "unauthorized").await;
    assert!(
        chat.contains("/?token="),
        "the page says how to pass one: {chat}"
    );
    wait_text(&client, "#conn", "disconnected").await;

    client
        .goto(&format!("{url}?token={token}"))
        .await
        .expect("page loads");
    wait_session(&client).await;
    let address = client.current_url().await.unwrap();
    assert_eq!(address.query(), None, "the token left the address bar");
    let first = client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .attr("data-session")
        .await
        .unwrap()
        .expect("a session id");
    type_and_send(
        &client,
        "#exec-input",
        "#exec-form button",
        "echo with-token",
    )
    .await;
    wait_text(&client, "#terminal", "with-token\n").await;

    // A reload of the plain address: the kept token goes with the resume fields.
    client.refresh().await.unwrap();
    let pill = wait_text(&client, "#session", "(resumed)").await;
    assert!(pill.contains(&first[..8]), "{pill} is {first}");

    client.close().await.unwrap();
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

/// The page is where an agent's MCP calls are approved: it shows the endpoint and token to
/// hand to the agent, who is asking (the MCP client's name), a switch for approving reads
/// automatically (the session's policy), and the session's audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_approves_an_agents_mcp_calls_and_shows_the_audit_trail() {
    use common::mcp::{agent, audit_trail, call, is_error, result_text};
    let instance = unique_instance("browser-mcp");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_POOL_MIN_IDLE", "1")]).await;
    let (client, _driver) = browser().await;
    client
        .goto(&format!("http://{}/", service.addr))
        .await
        .expect("page loads");
    wait_session(&client).await;
    client
        .find(Locator::Css("#agent"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let url = wait_text(&client, "#mcp-url", "/mcp").await;
    let token = wait_text(&client, "#mcp-token", "spw_").await;
    let agent = agent(&url, &token).await.expect("the agent connects");

    // `writes` (reads run at once): a write waits for the Approve button.
    let pending = {
        let p = agent.peer().clone();
        tokio::spawn(async move {
            call(
                &p,
                "write_file",
                serde_json::json!({"path": "from-agent.txt", "content": "approved in chromium"}),
            )
            .await
        })
    };
    let who = wait_text(&client, ".proposal .origin", "(MCP)").await;
    assert_eq!(who, "sandpool-test-agent/1.2.3 (MCP)");
    wait_text(&client, ".proposal code", "from-agent.txt").await;
    client
        .find(Locator::Css(".proposal button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let written = pending.await.unwrap();
    assert!(!is_error(&written), "{}", result_text(&written));
    wait_text(&client, ".proposal .status", "ok").await;
    let read = call(
        &agent,
        "read_file",
        serde_json::json!({"path": "from-agent.txt"}),
    )
    .await;
    assert_eq!(result_text(&read), "approved in chromium");

    // The switch off: reads wait too.
    client
        .find(Locator::Css("#auto-reads"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The switch is the session's policy once its ack is back; a read then asks first.
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("body[data-approval=\"all\"]"))
        .await
        .expect("the policy is all");
    let waiting = {
        let p = agent.peer().clone();
        tokio::spawn(async move { call(&p, "list_dir", serde_json::json!({"path": "."})).await })
    };
    // The second proposal on the page is the read's.
    let approve = second_button(
        &client,
        ".proposal button.approve",
        "the read's approve button",
    )
    .await;
    approve.click().await.unwrap();
    assert!(result_text(&waiting.await.unwrap()).contains("from-agent.txt"));
    // The read's entry is appended in the background; the panel is read once it is there.
    within(30, "the read in the audit trail", async {
        loop {
            let sid = token.split('_').nth(1).unwrap();
            let trail = audit_trail(&format!("http://{}", service.addr), sid, &token).await;
            if trail["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["tool"] == "list_dir" && e["decision"] == "approved")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    // The audit trail: the agent's calls, who decided, the chain intact.
    client
        .find(Locator::Css("#audit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let state = wait_text(&client, "#audit-state", "entries, chain intact").await;
    assert!(!state.starts_with("0 "), "{state}");
    let list = wait_text(&client, "#audit-list", "list_dir").await;
    assert!(
        list.contains("sandpool-test-agent/1.2.3 write_file") && list.contains("approved by user"),
        "{list}"
    );
    client.close().await.unwrap();
    assert!(sigterm_and_wait(service).success());
}
