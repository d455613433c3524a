//! Watch as the kube crate's watcher uses it: list then watch, events for changes,
//! bookmarks, a restart of the control plane on the same store (objects and
//! resourceVersions survive), and 410 Gone for a version older than the history kept,
//! after which the watcher relists and carries on.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "w"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]}}))
    .unwrap()
}

/// Names the watcher currently believes exist, fed by its events.
async fn next_names(
    stream: &mut (impl futures::Stream<Item = Result<Event<Pod>, watcher::Error>> + Unpin),
    names: &mut BTreeSet<String>,
) {
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("an event within 10 s");
    match ev.expect("stream open").expect("no watch error") {
        Event::Apply(p) | Event::InitApply(p) => {
            names.insert(p.metadata.name.unwrap());
        }
        Event::Delete(p) => {
            names.remove(&p.metadata.name.unwrap());
        }
        Event::Init => names.clear(),
        Event::InitDone => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watcher_follows_changes_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let port = lab.addr.port();
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    pods.create(&PostParams::default(), &pod("before")).await.unwrap();

    let mut stream = watcher::watcher(pods.clone(), watcher::Config::default().labels("app=w")).boxed();
    let mut names = BTreeSet::new();
    while !names.contains("before") {
        next_names(&mut stream, &mut names).await;
    }
    pods.create(&PostParams::default(), &pod("p1")).await.unwrap();
    while !names.contains("p1") {
        next_names(&mut stream, &mut names).await;
    }
    pods.delete("before", &DeleteParams::default()).await.unwrap();
    while names.contains("before") {
        next_names(&mut stream, &mut names).await;
    }
    let rv_before: u64 = pods.get("p1").await.unwrap().metadata.resource_version.unwrap().parse().unwrap();

    // Restart on the same store and port: the objects are there, versions go on rising,
    // and the same watcher (its connection cut) re-watches and keeps up.
    lab.stop().await;
    let lab = TestLab::start(dir.path(), port).await;
    let pods2: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    assert!(pods2.get("p1").await.is_ok(), "p1 survived the restart");
    let p2 = pods2.create(&PostParams::default(), &pod("p2")).await.unwrap();
    let rv_after: u64 = p2.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv_after > rv_before, "resourceVersions continue ({rv_after} > {rv_before})");
    while !names.contains("p2") {
        next_names(&mut stream, &mut names).await;
    }
    assert_eq!(names, ["p1", "p2"].iter().map(|s| s.to_string()).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_version_too_old_is_gone_and_bookmarks_flow() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    pods.create(&PostParams::default(), &pod("a")).await.unwrap();
    let port = lab.addr.port();
    lab.stop().await;
    // After a restart the event history starts at the current version: older is gone.
    let lab = TestLab::start(dir.path(), port).await;
    let (status, body) =
        lab.raw("GET", "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1", "application/json", b"").await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "ERROR");
    assert_eq!(body["object"]["code"], 410);
    assert_eq!(body["object"]["reason"], "Expired");

    // A raw watch from now with bookmarks: the pod's ADDED, then a BOOKMARK.
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    let rv = pods.list(&Default::default()).await.unwrap().metadata.resource_version.unwrap();
    let wp = kube::api::WatchParams { bookmarks: true, ..Default::default() }.timeout(20);
    let mut events = pods.watch(&wp, &rv).await.unwrap().boxed();
    pods.create(&PostParams::default(), &pod("b")).await.unwrap();
    let mut saw_added = false;
    let mut saw_bookmark = false;
    while !(saw_added && saw_bookmark) {
        match tokio::time::timeout(Duration::from_secs(15), events.try_next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap()
        {
            kube::api::WatchEvent::Added(p) => saw_added |= p.metadata.name.as_deref() == Some("b"),
            kube::api::WatchEvent::Bookmark(_) => saw_bookmark = true,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watcher_relists_after_410_and_sees_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let lab = TestLab::start(dir.path(), 0).await;
    let port = lab.addr.port();
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    pods.create(&PostParams::default(), &pod("seen")).await.unwrap();
    let mut stream = watcher::watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut names = BTreeSet::new();
    while !names.contains("seen") {
        next_names(&mut stream, &mut names).await;
    }
    lab.stop().await;

    // While the API is down, the store moves on (as another writer would have): the
    // watcher's resourceVersion is now older than anything the restarted server keeps.
    {
        let store = flatnet_lab::store::Store::open(&dir.path().join("store.redb")).unwrap();
        for name in ["missed-1", "missed-2"] {
            let mut obj = serde_json::to_value(pod(name)).unwrap();
            obj["metadata"]["namespace"] = json!("default");
            store
                .mutate(flatnet_lab::store::Key::new("pods", "default", name), move |_, _| {
                    Ok(flatnet_lab::store::Change::Put(obj))
                })
                .await
                .unwrap();
        }
        store.shutdown().await;
    }
    let _lab = TestLab::start(dir.path(), port).await;
    // The re-watch gets 410 Gone (the watcher reports it), then relists and finds both.
    let mut saw_gone = false;
    let mut relisted = false;
    while !relisted {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("an event within 10 s");
        match ev.expect("stream open") {
            Err(watcher::Error::WatchError(s)) if s.code == 410 => saw_gone = true,
            Err(e) => panic!("unexpected watch error: {e}"),
            Ok(Event::Apply(p) | Event::InitApply(p)) => {
                names.insert(p.metadata.name.unwrap());
            }
            Ok(Event::Delete(p)) => {
                names.remove(&p.metadata.name.unwrap());
            }
            Ok(Event::Init) => names.clear(),
            Ok(Event::InitDone) => relisted = saw_gone,
        }
    }
    assert!(names.contains("missed-1") && names.contains("missed-2"), "{names:?}");
    assert!(saw_gone, "the re-watch from the old version was answered 410");
    assert!(names.contains("seen"));
}
