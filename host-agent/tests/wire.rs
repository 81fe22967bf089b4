//! The frames the host writes to an enclave for a scripted exchange (the
//! stream-0 calls, requests on fresh stream ids, batched acknowledgements),
//! compared with the transcript recorded before the connection state
//! machine replaced the hand-written frame handling
//! (`tests/wire/host_transcript.txt`; `COCOON_RECORD_WIRE=1` writes it
//! anew).

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_frames_match_the_recorded_transcript() {
    let dir = TempDir::new("wire");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    for (i, prompt) in [&b"first"[..], b"second", b"third"].into_iter().enumerate() {
        let (sealed, _) = seal(t, &account, 16, prompt);
        let r = post(host.public, t, &account, &sealed).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Each receipt's acknowledgement goes before the next request.
        eventually(5, "the acknowledgement", || {
            enclave
                .received()
                .iter()
                .filter(|l| l.contains("ReceiptAck"))
                .count()
                > i
        })
        .await;
    }
    // A request the enclave refuses: no receipt, no acknowledgement.
    enclave.set_behavior(Behavior::ErrorFrame("no".into()));
    let (sealed, _) = seal(t, &account, 16, b"refused");
    assert_eq!(post(host.public, t, &account, &sealed).await.status, 502);
    host.stop().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = enclave.received().join("\n") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire/host_transcript.txt");
    cocoon_test_kit::matches_recording(&path, &got, "the host's frames");
}
