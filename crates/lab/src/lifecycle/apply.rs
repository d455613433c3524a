//! `flatnet lab apply -f FILE`: create each object of a YAML (multi-document) or JSON
//! file, or replace it when it exists, without kubectl.

use crate::layout::Layout;
use anyhow::{Context, bail};
use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::Scope;
use serde_json::Value;
use std::path::Path;

/// The objects in `text`: YAML documents, or a JSON object; `kind: List` is unpacked.
pub fn parse(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).context("the file is not valid JSON")?]
    } else {
        serde_saphyr::from_multiple(text).context("the file is not valid YAML")?
    };
    let mut out = Vec::new();
    for d in docs.into_iter().filter(|d| !d.is_null()) {
        match d.get("kind").and_then(Value::as_str) {
            Some("List") => out.extend(d.get("items").and_then(Value::as_array).cloned().unwrap_or_default()),
            Some(_) => out.push(d),
            None => bail!("an object in the file has no kind: {}", d.to_string().chars().take(80).collect::<String>()),
        }
    }
    Ok(out)
}

/// Applies every object of `file`, telling `applied` each `kind/name created|configured`.
pub fn run(layout: &Layout, file: &Path, mut applied: impl FnMut(&str)) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let objects = parse(&text)?;
    super::connect::runtime()?.block_on(async {
        let client = super::connect::client(layout).await?;
        // Every object is checked (kind served, decodable, named) before any is written,
        // so a file with a bad object changes nothing.
        let mut prepared = Vec::new();
        for (i, obj) in objects.into_iter().enumerate() {
            prepared.push(prepare(&client, obj).await.with_context(|| format!("object {} of the file", i + 1))?);
        }
        for p in prepared {
            applied(&p.apply().await?);
        }
        anyhow::Ok(())
    })
}

/// An object checked against the API's discovery, ready to write.
pub struct Prepared {
    api: Api<DynamicObject>,
    obj: DynamicObject,
    name: String,
    what: String,
}

pub async fn prepare(client: &kube::Client, obj: Value) -> anyhow::Result<Prepared> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).context("apiVersion is missing")?;
    let kind = obj.get("kind").and_then(Value::as_str).context("kind is missing")?.to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the lab API does not serve {kind} ({api_version})"))?;
    let mut obj: DynamicObject = serde_json::from_value(obj).with_context(|| format!("decode the {kind}"))?;
    let name = obj.metadata.name.clone().with_context(|| format!("the {kind} has no metadata.name"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj.metadata.namespace.get_or_insert_with(|| "default".into()).clone();
            Api::namespaced_with(client.clone(), &ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let what = format!("{}/{name}", kind.to_lowercase());
    Ok(Prepared { api, obj, name, what })
}

impl Prepared {
    /// Whether an object of this kind and name is already there.
    pub async fn exists(&self) -> anyhow::Result<bool> {
        Ok(self.api.get_opt(&self.name).await.with_context(|| format!("read {}", self.what))?.is_some())
    }

    /// Creates the object, or replaces it when it exists; returns `kind/name created|configured`.
    pub async fn apply(mut self) -> anyhow::Result<String> {
        let what = self.what;
        // A namespace created a moment ago may not have its `default` ServiceAccount yet
        // (kube-controller-manager makes it), and kube-apiserver refuses pods until then:
        // wait for it a few seconds, as a controller's retry would.
        let mut created = self.api.create(&PostParams::default(), &self.obj).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while matches!(&created, Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("serviceaccount"))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            created = self.api.create(&PostParams::default(), &self.obj).await;
        }
        match created {
            Ok(_) => Ok(format!("{what} created")),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let current = self.api.get(&self.name).await?;
                self.obj.metadata.resource_version = current.metadata.resource_version;
                self.api
                    .replace(&self.name, &PostParams::default(), &self.obj)
                    .await
                    .with_context(|| format!("update {what}"))?;
                Ok(format!("{what} configured"))
            }
            Err(e) => Err(anyhow::Error::from(e).context(format!("create {what}"))),
        }
    }
}

/// Checks and writes one object.
pub async fn apply_one(client: &kube::Client, obj: Value) -> anyhow::Result<String> {
    prepare(client, obj).await?.apply().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn yaml_documents_and_lists_unpack() {
        let objs = super::parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: b}}\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1]["kind"], "Service");
        assert!(super::parse("metadata: {name: a}\n").unwrap_err().to_string().contains("no kind"));
        assert!(super::parse("{\"kind\": \"Pod\"").is_err());
    }
}
