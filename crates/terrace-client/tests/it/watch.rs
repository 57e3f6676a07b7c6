use crate::server::{Events, Script, generation, problem_answer, serve};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use terrace_client::{AreaSpec, Client, ClientConfig, ClientError, CreateRequest, WatchError, WatchOptions};
use terrace_domain::{AreaKind, GenerationStatus, Style};
use uuid::Uuid;

fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        max_attempts: 4,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

fn options() -> WatchOptions {
    WatchOptions {
        max_duration: Duration::from_secs(5),
        max_failures: 3,
        stream_idle: Duration::from_secs(2),
        poll_initial: Duration::from_millis(20),
        poll_max: Duration::from_millis(100),
    }
}

async fn client(script: &Arc<Script>) -> Client {
    let base = serve(script.clone()).await;
    Client::new(&base, "token", config()).unwrap()
}

fn request() -> CreateRequest {
    CreateRequest::new("12 Garden Lane", vec![AreaSpec::new(AreaKind::Patio, Style::JapaneseZen)])
}

/// Waits, at most `bound`, until `cond` holds.
async fn eventually(bound: Duration, cond: impl Fn() -> bool) {
    tokio::time::timeout(bound, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition reached in time");
}

#[tokio::test]
async fn a_create_retries_busy_and_unavailable_with_one_idempotency_key() {
    let script = Script::new(Events::Status(404));
    let id = Uuid::new_v4();
    script.creates.lock().unwrap().extend([
        problem_answer(409, "account_busy", Some("0")),
        problem_answer(503, "overloaded", None),
        (202, generation(id, "pending", 0), None),
    ]);
    let g = client(&script).await.create(&request()).await.unwrap();
    assert_eq!(g.id, id);
    let keys = script.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3);
    assert!(!keys[0].is_empty() && keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

#[tokio::test]
async fn a_create_never_retries_a_permanent_answer() {
    for (status, code) in [(402, "insufficient_credits"), (400, "validation_failed"), (409, "conflict")] {
        let script = Script::new(Events::Status(404));
        script.creates.lock().unwrap().push_back(problem_answer(status, code, None));
        let err = client(&script).await.create(&request()).await.unwrap_err();
        assert!(matches!(&err, ClientError::Api { status: s, .. } if *s == status), "{err:?}");
        assert_eq!(script.keys.lock().unwrap().len(), 1, "{code} was retried");
    }
}

#[tokio::test]
async fn a_create_gives_up_after_its_attempts() {
    let script = Script::new(Events::Status(404));
    script.creates.lock().unwrap().extend((0..10).map(|_| problem_answer(503, "overloaded", None)));
    let err = client(&script).await.create(&request()).await.unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 503, .. }));
    assert_eq!(script.keys.lock().unwrap().len(), config().max_attempts as usize);
}

#[tokio::test]
async fn a_watch_follows_the_stream_to_a_terminal_state() {
    let id = Uuid::new_v4();
    let script = Script::new(Events::Send(vec![
        generation(id, "processing", 10),
        generation(id, "processing", 10),
        generation(id, "processing", 60),
        generation(id, "completed", 100),
    ]));
    let items: Vec<_> = client(&script).await.watch(id, options()).collect().await;
    let statuses: Vec<_> = items.iter().map(|i| i.as_ref().unwrap().areas[0].progress).collect();
    assert_eq!(statuses, [10, 60, 100], "repeated snapshots are not yielded");
    assert_eq!(items.last().unwrap().as_ref().unwrap().status, GenerationStatus::Completed);
    assert_eq!(script.gets.load(Ordering::SeqCst), 0, "no polling while the stream works");
}

#[tokio::test]
async fn a_watch_falls_back_to_polling_when_the_stream_breaks() {
    let id = Uuid::new_v4();
    let script = Script::new(Events::Send(vec![generation(id, "processing", 10)]));
    script.polls.lock().unwrap().0.extend([
        (200, generation(id, "processing", 10), None),
        problem_answer(503, "overloaded", None),
        (200, generation(id, "completed", 100), None),
    ]);
    let items: Vec<_> = client(&script).await.watch(id, options()).collect().await;
    let got: Vec<_> = items.into_iter().map(|i| i.unwrap().status).collect();
    assert_eq!(got, [GenerationStatus::Processing, GenerationStatus::Completed]);
    assert_eq!(script.gets.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_watch_ends_after_its_maximum_duration() {
    let id = Uuid::new_v4();
    let script = Script::new(Events::SendThenKeepalive(vec![generation(id, "processing", 10)]));
    let opts = WatchOptions { max_duration: Duration::from_millis(400), ..options() };
    let start = Instant::now();
    let items: Vec<_> = client(&script).await.watch(id, opts).collect().await;
    let took = start.elapsed();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1], Err(WatchError::MaxDuration(Duration::from_millis(400))));
    assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn a_watch_opens_its_circuit_after_consecutive_failures() {
    let script = Script::new(Events::Status(503));
    script.polls.lock().unwrap().1 = Some(problem_answer(503, "overloaded", None));
    let items: Vec<_> = client(&script).await.watch(Uuid::new_v4(), options()).collect().await;
    assert_eq!(items.len(), 1);
    assert!(matches!(&items[0], Err(WatchError::CircuitOpen { failures: 3, .. })), "{items:?}");
    let requests = script.event_requests.load(Ordering::SeqCst) + script.gets.load(Ordering::SeqCst);
    assert_eq!(requests, 3, "one request per counted failure");
}

#[tokio::test]
async fn a_watch_stops_at_once_on_a_permanent_answer() {
    let script = Script::new(Events::Status(404));
    let items: Vec<_> = client(&script).await.watch(Uuid::new_v4(), options()).collect().await;
    assert!(
        matches!(&items[..], [Err(WatchError::Rejected(ClientError::Api { status: 404, .. }))]),
        "{items:?}"
    );
    assert_eq!(script.gets.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dropping_a_polling_watch_stops_its_requests() {
    let mut script = Script::new(Events::Status(503));
    Arc::get_mut(&mut script).unwrap().counting_polls = true;
    let mut watch = client(&script).await.watch(Uuid::new_v4(), options());
    assert!(watch.next().await.unwrap().is_ok());
    assert!(watch.next().await.unwrap().is_ok());
    drop(watch);
    let after_drop = script.gets.load(Ordering::SeqCst);
    // Ten polling intervals of silence: a leaked poller would have asked again.
    tokio::time::sleep(options().poll_max * 10).await;
    assert_eq!(script.gets.load(Ordering::SeqCst), after_drop);
}

#[tokio::test]
async fn dropping_a_streaming_watch_closes_its_connection() {
    let id = Uuid::new_v4();
    let script = Script::new(Events::SendThenKeepalive(vec![generation(id, "processing", 10)]));
    let mut watch = client(&script).await.watch(id, options());
    assert!(watch.next().await.unwrap().is_ok());
    assert_eq!(script.open_streams.load(Ordering::SeqCst), 1);
    drop(watch);
    eventually(Duration::from_secs(2), || script.open_streams.load(Ordering::SeqCst) == 0).await;
    assert_eq!(script.event_requests.load(Ordering::SeqCst), 1);
    assert_eq!(script.gets.load(Ordering::SeqCst), 0);
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body) and
/// returns its head.
async fn read_request(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client closed early");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text[..end].to_owned();
            }
        }
    }
}

#[tokio::test]
async fn a_create_cut_off_mid_request_is_sent_again_with_the_same_key() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let id = Uuid::new_v4();
    let server = tokio::spawn(async move {
        // The first connection is cut after the request arrives, unanswered.
        let (mut first, _) = listener.accept().await.unwrap();
        let head1 = read_request(&mut first).await;
        drop(first);
        let (mut second, _) = listener.accept().await.unwrap();
        let head2 = read_request(&mut second).await;
        let body = generation(id, "pending", 0).to_string();
        let answer = format!(
            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        second.write_all(answer.as_bytes()).await.unwrap();
        (head1, head2)
    });
    let client = Client::new(&base, "token", config()).unwrap();
    let g = client.create(&request()).await.unwrap();
    assert_eq!(g.id, id);
    let (head1, head2) = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    let key = |h: &str| {
        h.lines().find(|l| l.to_ascii_lowercase().starts_with("idempotency-key:")).map(str::to_owned)
    };
    assert!(key(&head1).is_some());
    assert_eq!(key(&head1), key(&head2), "the retry carries the same key");
}
