//! The chat page in real headless Chromium (Debian's `chromium` and `chromium-driver`, over
//! WebDriver): open it, send a message, approve the proposed command, see its output stream
//! into the terminal pane, run a command directly, and save a screenshot to
//! `target/browser-chat.png` for a person to look at; upload, list, delete and undo files in
//! the file panel (`target/browser-files.png`).

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

/// The value of `attr` on the first element matching `css`, `None` when there is no such
/// element or attribute.
async fn attr_of(client: &fantoccini::Client, css: &str, attr: &str) -> Option<String> {
    let el = client.find(Locator::Css(css)).await.ok()?;
    el.attr(attr).await.ok().flatten()
}

/// Waits until the first element matching `css` has `attr` equal to `want`.
async fn wait_attr(client: &fantoccini::Client, css: &str, attr: &str, want: &str) {
    within(60, &format!("{css} [{attr}] to be {want:?}"), async {
        while attr_of(client, css, attr).await.as_deref() != Some(want) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// Waits until no element matches `css`.
async fn wait_gone(client: &fantoccini::Client, css: &str) {
    within(60, &format!("{css} to go"), async {
        while !client
            .find_all(Locator::Css(css))
            .await
            .is_ok_and(|found| found.is_empty())
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// Sends a chat message, approves the command the agent proposes for it and waits until it
/// ran; returns the proposal's call id.
async fn run_through_chat(client: &fantoccini::Client, command: &str) -> String {
    type_and_send(client, "#chat-input", "#chat-form button", command).await;
    // The one Approve button not clicked yet is this proposal's.
    let approve = client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(".proposal button.approve:enabled"))
        .await
        .expect("an approve button");
    let proposals = client.find_all(Locator::Css(".proposal")).await.unwrap();
    let call_id = proposals
        .last()
        .unwrap()
        .attr("data-call-id")
        .await
        .unwrap()
        .expect("a call id");
    approve.click().await.unwrap();
    wait_text(
        client,
        &format!(".proposal[data-call-id=\"{call_id}\"] .status"),
        "ok, exit 0",
    )
    .await;
    call_id
}

/// Files and undo on the page. A file sent through the file input shows in the file panel; a
/// chat command that overwrites it (and adds another) shows what it changed next to an Undo
/// button; Undo puts the workspace back (a `cat` through the chat and the page's own download
/// say so). A file over 4 MiB goes up in chunks, intact. A delete from the panel (after its
/// confirm dialog) is undone too; undoing the first upload undoes everything after it and
/// disables every later button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_uploads_damages_and_undoes_a_file_in_chromium() {
    use sha2::Digest;
    const ORIGINAL: &str = "original words, uploaded from the host\n";
    let instance = unique_instance("browser-files");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_POOL_MIN_IDLE", "1")]).await;
    let (client, _driver) = browser().await;
    client
        .goto(&format!("http://{}/", service.addr))
        .await
        .expect("page loads");
    wait_session(&client).await;
    wait_text(&client, "#conn", "connected").await;
    wait_text(&client, "#files-state", "Empty folder").await;

    // Upload: chromedriver sets a file input's files from a path on this machine.
    let host = tempfile::tempdir().unwrap();
    let notes = host.path().join("notes.txt");
    std::fs::write(&notes, ORIGINAL).unwrap();
    let input = client.find(Locator::Css("#file-input")).await.unwrap();
    input.send_keys(notes.to_str().unwrap()).await.unwrap();
    let entry = r#"#files .file-entry[data-name="notes.txt"]"#;
    wait_attr(&client, entry, "data-size", &ORIGINAL.len().to_string()).await;
    let upload = wait_text(&client, ".msg.change", "Uploaded /workspace/notes.txt").await;
    assert!(upload.contains("+1 ~0 -0"), "{upload}");
    let upload_id = attr_of(&client, ".msg.change .undo", "data-call-id")
        .await
        .expect("the upload's undo button");

    // A chat command damages it and adds a folder: its result says so, with an Undo.
    let damage = run_through_chat(
        &client,
        "echo damaged > notes.txt; mkdir junk; echo x > junk/new.txt",
    )
    .await;
    let changes_css = format!(".proposal[data-call-id=\"{damage}\"] .changes");
    let summary = wait_text(&client, &changes_css, "~1").await;
    let paths = attr_of(&client, &changes_css, "title").await.unwrap();
    assert!(
        paths.contains("~ notes.txt") && paths.contains("+ junk/new.txt"),
        "{summary}: {paths}"
    );
    assert!(!paths.contains("- "), "nothing was removed: {paths}");
    // The panel was listed again after the result.
    wait_attr(&client, entry, "data-size", "8").await;
    wait_attr(
        &client,
        r#"#files .file-entry[data-name="junk"]"#,
        "data-type",
        "dir",
    )
    .await;
    // Into the folder and back up.
    client
        .find(Locator::Css(r#".file-entry[data-name="junk"] .name"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&client, "#files-path", "/workspace/junk").await;
    wait_attr(
        &client,
        r#"#files .file-entry[data-name="new.txt"]"#,
        "data-size",
        "2",
    )
    .await;
    client
        .find(Locator::Css(r#".file-entry[data-name=".."] .name"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_attr(&client, entry, "data-size", "8").await;

    // Undo: the button goes, the file is back, the folder gone.
    let undo_css = format!(".undo[data-call-id=\"{damage}\"]");
    client
        .find(Locator::Css(&undo_css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&client, &undo_css, "Undone").await;
    assert!(
        !client
            .find(Locator::Css(&undo_css))
            .await
            .unwrap()
            .is_enabled()
            .await
            .unwrap()
    );
    wait_attr(&client, entry, "data-size", &ORIGINAL.len().to_string()).await;
    wait_gone(&client, r#"#files .file-entry[data-name="junk"]"#).await;
    let upload_undo = format!(".undo[data-call-id=\"{upload_id}\"]");
    assert!(
        client
            .find(Locator::Css(&upload_undo))
            .await
            .unwrap()
            .is_enabled()
            .await
            .unwrap(),
        "an earlier call stays undoable"
    );

    // The original words, through the chat; a command that changes nothing has no Undo.
    let cat = run_through_chat(&client, "cat notes.txt").await;
    wait_text(&client, "#terminal", ORIGINAL.trim_end()).await;
    assert!(
        client
            .find_all(Locator::Css(&format!(
                ".proposal[data-call-id=\"{cat}\"] .undo"
            )))
            .await
            .unwrap()
            .is_empty()
    );
    // And through the page's download (HTTP with the session's workspace token).
    let downloaded = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fileBlob(arguments[0]).then((b) => b.text()).then(done, (e) => done('ERROR ' + e.message));",
            vec![json!("notes.txt")],
        )
        .await
        .unwrap();
    assert_eq!(downloaded, json!(ORIGINAL));

    // A file over 4 MiB: uploaded in 4 MiB chunks, the same bytes in the sandbox.
    let big: Vec<u8> = (0..9 * 1024 * 1024 + 7u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big_path = host.path().join("big.bin");
    std::fs::write(&big_path, &big).unwrap();
    let big_sha = hex::encode(sha2::Sha256::digest(&big));
    client
        .find(Locator::Css("#file-input"))
        .await
        .unwrap()
        .send_keys(big_path.to_str().unwrap())
        .await
        .unwrap();
    wait_attr(
        &client,
        r#"#files .file-entry[data-name="big.bin"]"#,
        "data-size",
        &big.len().to_string(),
    )
    .await;
    wait_text(&client, "#chat", "Uploaded /workspace/big.bin").await;
    type_and_send(
        &client,
        "#exec-input",
        "#exec-form button",
        "sha256sum big.bin",
    )
    .await;
    wait_text(&client, "#terminal", &format!("{big_sha}  big.bin")).await;

    // A file dropped on the panel (WebDriver cannot drag from the desktop: the drop event is
    // made in the page, with the File in its DataTransfer, as the browser would hand it over).
    client
        .execute(
            r#"const dt = new DataTransfer();
               dt.items.add(new File(["dropped in\n"], "dropped.txt", { type: "text/plain" }));
               document.getElementById("files").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));"#,
            vec![],
        )
        .await
        .unwrap();
    wait_attr(
        &client,
        r#"#files .file-entry[data-name="dropped.txt"]"#,
        "data-size",
        "11",
    )
    .await;

    // Delete from the panel (it asks first), then undo the delete.
    client
        .find(Locator::Css(&format!("{entry} button.delete")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let question = client.get_alert_text().await.unwrap();
    assert!(question.contains("notes.txt"), "{question}");
    client.accept_alert().await.unwrap();
    wait_gone(&client, entry).await;
    let deleted = wait_text(&client, "#chat", "Deleted /workspace/notes.txt").await;
    assert!(deleted.contains("+0 ~0 -1"), "{deleted}");
    let delete_undo = client
        .find_all(Locator::Css(".msg.change .undo"))
        .await
        .unwrap()
        .pop()
        .unwrap();
    delete_undo.click().await.unwrap();
    wait_attr(&client, entry, "data-size", &ORIGINAL.len().to_string()).await;

    let png = client.screenshot().await.expect("screenshot");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-files.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    assert!(png.len() > 10_000, "a real picture");

    // Undoing the first upload takes everything after it back: an empty workspace, and no
    // Undo button left to press.
    client
        .find(Locator::Css(&upload_undo))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&client, "#files-state", "Empty folder").await;
    for button in client.find_all(Locator::Css(".undo")).await.unwrap() {
        assert!(!button.is_enabled().await.unwrap());
    }

    client.close().await.unwrap();
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}
