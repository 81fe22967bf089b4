//! `TonHttpClient` against a local HTTP server (tokio, real sockets) that
//! answers from a script: retries on 429/5xx with Retry-After honoured,
//! errors that keep their cause, the API key header, the rate limit and
//! the request counter, and the v2 JSON shapes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_chain::http::{ChainApiConfig, TonHttpClient};
use cocoon_chain::{AccountStatus, ChainClient, ChainError, StackValue, TvmInt};
use cocoon_protocol::settlement::ContractAddress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One scripted answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

struct Server {
    endpoint: String,
    /// Each request's head and body, as received.
    seen: Arc<Mutex<Vec<String>>>,
}

async fn server(script: Vec<Answer>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(script.into_iter()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = s2.clone();
            let script = script.clone();
            tokio::spawn(async move {
                loop {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Head, then Content-Length bytes of body.
                    let (head_end, len) = loop {
                        let n = match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map(|v| v.trim().parse::<usize>().unwrap())
                                .unwrap_or(0);
                            break (p + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let n = match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..head_end + len]).into_owned());
                    let next = script.lock().unwrap().next();
                    let Some((status, headers, body)) = next else {
                        return;
                    };
                    if status == 0 {
                        // Never answer (a timeout).
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let mut resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        resp.push_str(&format!("{k}: {v}\r\n"));
                    }
                    resp.push_str("\r\n");
                    resp.push_str(&body);
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Server {
        endpoint: format!("http://{addr}/api/v2"),
        seen,
    }
}

fn cfg(endpoint: &str) -> ChainApiConfig {
    ChainApiConfig {
        endpoint: endpoint.into(),
        api_key: None,
        timeout: Duration::from_secs(2),
        max_retries: 3,
        requests_per_second: 0.0,
    }
}

const ADDR: &str = "0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8";

fn address() -> ContractAddress {
    ContractAddress::parse(ADDR).unwrap()
}

fn ok(result: &str) -> Answer {
    (200, vec![], format!(r#"{{"ok":true,"result":{result}}}"#))
}

const UNINIT: &str = r#"{"@type":"raw.fullAccountState","balance":"5000000000","code":"","data":"","last_transaction_id":{"@type":"internal.transactionId","lt":"3000000","hash":"YGM6lAOBk3fuR3vjgpmDV9q2fgLoX6x1Wj9Knt4hcyE="},"frozen_hash":"","sync_utime":1,"state":"uninitialized"}"#;

#[tokio::test]
async fn retries_429_honouring_retry_after_then_succeeds() {
    let s = server(vec![
        (
            429,
            vec![("retry-after", "1".into())],
            r#"{"ok":false,"error":"Ratelimit exceed","code":429}"#.into(),
        ),
        (503, vec![], "<html>busy</html>".into()),
        ok(UNINIT),
    ])
    .await;
    let mut c = cfg(&s.endpoint);
    c.api_key = Some("k3y".into());
    let client = TonHttpClient::new(c).unwrap();
    let t = Instant::now();
    let st = client.account_state(&address()).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 honoured ({:?})",
        t.elapsed()
    );
    assert_eq!(st.status, AccountStatus::Uninitialized);
    assert_eq!(st.balance, 5_000_000_000);
    assert_eq!(st.last_transaction.unwrap().lt, 3_000_000);
    assert_eq!(client.requests_made(), 3);
    assert_eq!(client.requests_last_minute(), 3);
    let seen = s.seen.lock().unwrap();
    assert!(seen[0].starts_with("GET /api/v2/getAddressInformation?address=0%3A83dfd552"));
    assert!(seen
        .iter()
        .all(|r| r.to_ascii_lowercase().contains("x-api-key: k3y")));
}

#[tokio::test]
async fn gives_up_after_max_retries_with_the_api_message() {
    let busy: Answer = (
        502,
        vec![],
        r#"{"ok":false,"error":"LITE_SERVER_NOTREADY","code":502}"#.into(),
    );
    let s = server(vec![busy.clone(), busy.clone(), busy]).await;
    let mut c = cfg(&s.endpoint);
    c.max_retries = 2;
    let client = TonHttpClient::new(c).unwrap();
    match client.account_state(&address()).await {
        Err(ChainError::Api {
            status, message, ..
        }) => {
            assert_eq!(status, 502);
            assert!(message.contains("LITE_SERVER_NOTREADY"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.requests_made(), 3, "1 + max_retries attempts");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let s = server(vec![
        (
            400,
            vec![],
            r#"{"ok":false,"error":"Incorrect address","code":400}"#.into(),
        ),
        (
            500,
            vec![],
            r#"{"ok":false,"error":"LITE_SERVER_UNKNOWN: cannot apply external message to current state","code":500}"#.into(),
        ),
    ])
    .await;
    let client = TonHttpClient::new(cfg(&s.endpoint)).unwrap();
    assert!(matches!(
        client.account_state(&address()).await,
        Err(ChainError::Api { status: 400, .. })
    ));
    assert_eq!(client.requests_made(), 1);
    let boc = cocoon_protocol::ton::CellBuilder::new().build().to_boc();
    assert!(matches!(
        client.send_message(&boc).await,
        Err(ChainError::Api { status: 500, .. })
    ));
    assert_eq!(client.requests_made(), 2, "a refused external is final");
}

#[tokio::test]
async fn connection_refused_keeps_its_cause() {
    // A port nothing listens on: bind, note, drop.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = cfg(&format!("http://127.0.0.1:{port}/api/v2"));
    c.max_retries = 1;
    let client = TonHttpClient::new(c).unwrap();
    match client.account_state(&address()).await {
        Err(ChainError::Unreachable { reason, .. }) => {
            assert!(reason.starts_with("connection refused"), "{reason}");
            assert!(reason.contains("after 2 attempts"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn timeouts_are_reported_as_such() {
    let s = server(vec![(0, vec![], String::new())]).await;
    let mut c = cfg(&s.endpoint);
    c.timeout = Duration::from_millis(300);
    c.max_retries = 0;
    let client = TonHttpClient::new(c).unwrap();
    match client.account_state(&address()).await {
        Err(ChainError::Unreachable { reason, .. }) => {
            assert!(reason.starts_with("timed out"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rate_limit_spaces_requests() {
    let s = server(vec![ok(UNINIT), ok(UNINIT), ok(UNINIT), ok(UNINIT)]).await;
    let mut c = cfg(&s.endpoint);
    c.requests_per_second = 10.0;
    let client = Arc::new(TonHttpClient::new(c).unwrap());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.account_state(&address()).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Four requests at 10/s: the last starts at least 300 ms after the first.
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(client.requests_made(), 4);
}

#[tokio::test]
async fn get_method_stacks() {
    let cell = cocoon_protocol::ton::CellBuilder::new().build().to_boc();
    let b64 = <base64ct::Base64 as base64ct::Encoding>::encode_string(&cell);
    let result = format!(
        r#"{{"@type":"smc.runResult","gas_used":1,"exit_code":0,"stack":[["num","0x2a"],["num","-0x1"],["cell",{{"bytes":"{b64}","object":{{}}}}],["slice",{{"bytes":"{b64}"}}],["null",null],["tuple",{{"@type":"tvm.tuple","elements":[{{"@type":"tvm.stackEntryNumber","number":{{"@type":"tvm.numberDecimal","number":"7"}}}},{{"@type":"tvm.stackEntryCell","cell":{{"@type":"tvm.cell","bytes":"{b64}"}}}}]}}]]}}"#
    );
    let s = server(vec![
        ok(&result),
        ok(r#"{"@type":"smc.runResult","gas_used":1,"exit_code":11,"stack":[]}"#),
        ok(r#"{"@type":"smc.runResult","gas_used":1,"exit_code":0,"stack":[["cell",{"bytes":"AAAA"}]]}"#),
    ])
    .await;
    let client = TonHttpClient::new(cfg(&s.endpoint)).unwrap();
    let args = [
        StackValue::Int(TvmInt::from_u128(255)),
        StackValue::Cell(cell.clone()),
        StackValue::Slice(cell.clone()),
    ];
    let out = client
        .run_get_method(&address(), "get_x", &args)
        .await
        .unwrap();
    assert_eq!(out.len(), 6);
    assert_eq!(out[0], StackValue::Int(TvmInt::from_u128(42)));
    assert!(matches!(&out[1], StackValue::Int(v) if v.negative && v.magnitude[31] == 1));
    assert_eq!(out[2], StackValue::Cell(cell.clone()));
    assert_eq!(out[3], StackValue::Slice(cell.clone()));
    assert_eq!(out[4], StackValue::Null);
    assert_eq!(
        out[5],
        StackValue::Tuple(vec![
            StackValue::Int(TvmInt::from_u128(7)),
            StackValue::Cell(cell.clone())
        ])
    );
    let body = s.seen.lock().unwrap()[0].clone();
    let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["method"], "get_x");
    assert_eq!(v["address"], ADDR);
    assert_eq!(v["stack"][0], serde_json::json!(["num", "0xff"]));
    assert_eq!(v["stack"][1][0], "tvm.Cell");
    assert_eq!(v["stack"][2][0], "tvm.Slice");
    match client.run_get_method(&address(), "get_y", &[]).await {
        Err(ChainError::GetMethodFailed {
            exit_code, method, ..
        }) => assert_eq!((exit_code, method.as_str()), (11, "get_y")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.run_get_method(&address(), "get_z", &[]).await,
        Err(ChainError::Malformed { .. })
    ));
    assert!(matches!(
        client
            .run_get_method(&address(), "get_w", &[StackValue::Null])
            .await,
        Err(ChainError::InvalidRequest(_))
    ));
}

#[test]
fn bad_configuration_is_refused() {
    assert!(TonHttpClient::new(cfg("ftp://x")).is_err());
    assert!(TonHttpClient::new(cfg("not a url")).is_err());
    let mut c = cfg("http://127.0.0.1:1/api/v2");
    c.api_key = Some("bad\nkey".into());
    assert!(TonHttpClient::new(c).is_err());
    let c = ChainApiConfig::new("https://toncenter.com/api/v2");
    assert_eq!(c.requests_per_second, 1.0);
    assert!(!format!("{c:?}").contains("key\""));
}
