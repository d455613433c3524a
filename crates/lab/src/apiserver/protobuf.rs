//! Request bodies in Kubernetes' protobuf encoding, which kubectl's generator commands
//! send (`kubectl create namespace`, `create deployment`, `create service`, `create
//! configmap`, `create serviceaccount`, `create token`; client-go has no fallback to
//! JSON for them), read into the JSON this server stores. The envelope is `k8s\0` and
//! a `runtime.Unknown` (type meta, raw object); the object is read with the field
//! numbers of the Kubernetes API's `generated.proto` for the kinds and fields these
//! commands write. Go writes every plain (non-pointer) field, set or not: a zero there
//! is "not set", as JSON's omitempty has it; a pointer field's zero (`replicas: 0`) is
//! kept. A field this reader does not know is refused by number unless it is zero,
//! never dropped: the object would not be the one sent.

use serde_json::{Map, Value, json};

/// The protobuf content type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// One field on the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or("the body ends inside a number")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a number longer than 10 bytes".into())
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < buf.len() {
        let tag = varint(buf, &mut at)?;
        let wire = match tag & 7 {
            0 => Wire::Varint(varint(buf, &mut at)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?).map_err(|_| "a length too large")?;
                let end = at.checked_add(len).filter(|e| *e <= buf.len()).ok_or("a length past the end of the body")?;
                let b = &buf[at..end];
                at = end;
                Wire::Bytes(b)
            }
            1 => {
                at += 8;
                Wire::Fixed
            }
            5 => {
                at += 4;
                Wire::Fixed
            }
            w => return Err(format!("wire type {w} is not protobuf's")),
        };
        out.push((tag >> 3, wire));
    }
    if at > buf.len() {
        return Err("the body ends inside a field".into());
    }
    Ok(out)
}

/// What a field holds.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    /// A plain integer: 0 is not set.
    Int,
    /// A pointer integer (`*int32`): 0 is a value.
    OptInt,
    Bool,
    Msg(&'static [Field]),
    /// map<string, string>
    StrMap,
    /// map<string, Quantity>
    QuantityMap,
    IntOrString,
    Time,
}

struct Field(u64, &'static str, Ty, bool);

const fn f(n: u64, name: &'static str, ty: Ty) -> Field {
    Field(n, name, ty, false)
}

/// A repeated field.
const fn r(n: u64, name: &'static str, ty: Ty) -> Field {
    Field(n, name, ty, true)
}

const EMPTY: &[Field] = &[];
const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(11, "labels", Ty::StrMap),
    f(12, "annotations", Ty::StrMap),
    r(14, "finalizers", Ty::Str),
];
const SELECTOR_REQUIREMENT: &[Field] = &[f(1, "key", Ty::Str), f(2, "operator", Ty::Str), r(3, "values", Ty::Str)];
const LABEL_SELECTOR: &[Field] =
    &[f(1, "matchLabels", Ty::StrMap), r(2, "matchExpressions", Ty::Msg(SELECTOR_REQUIREMENT))];
const CONTAINER_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "hostPort", Ty::Int),
    f(3, "containerPort", Ty::Int),
    f(4, "protocol", Ty::Str),
    f(5, "hostIP", Ty::Str),
];
const ENV_VAR: &[Field] = &[f(1, "name", Ty::Str), f(2, "value", Ty::Str)];
const RESOURCES: &[Field] = &[f(1, "limits", Ty::QuantityMap), f(2, "requests", Ty::QuantityMap)];
const CONTAINER: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "image", Ty::Str),
    r(3, "command", Ty::Str),
    r(4, "args", Ty::Str),
    f(5, "workingDir", Ty::Str),
    r(6, "ports", Ty::Msg(CONTAINER_PORT)),
    r(7, "env", Ty::Msg(ENV_VAR)),
    f(8, "resources", Ty::Msg(RESOURCES)),
    f(13, "terminationMessagePath", Ty::Str),
    f(14, "imagePullPolicy", Ty::Str),
    f(16, "stdin", Ty::Bool),
    f(17, "stdinOnce", Ty::Bool),
    f(18, "tty", Ty::Bool),
    f(20, "terminationMessagePolicy", Ty::Str),
];
const POD_SPEC: &[Field] = &[
    r(2, "containers", Ty::Msg(CONTAINER)),
    f(3, "restartPolicy", Ty::Str),
    f(4, "terminationGracePeriodSeconds", Ty::OptInt),
    f(6, "dnsPolicy", Ty::Str),
    f(7, "nodeSelector", Ty::StrMap),
    f(8, "serviceAccountName", Ty::Str),
    f(10, "nodeName", Ty::Str),
    f(11, "hostNetwork", Ty::Bool),
    f(19, "schedulerName", Ty::Str),
    r(20, "initContainers", Ty::Msg(CONTAINER)),
];
const POD_TEMPLATE: &[Field] = &[f(1, "metadata", Ty::Msg(OBJECT_META)), f(2, "spec", Ty::Msg(POD_SPEC))];
const ROLLING_UPDATE: &[Field] = &[f(1, "maxUnavailable", Ty::IntOrString), f(2, "maxSurge", Ty::IntOrString)];
const STRATEGY: &[Field] = &[f(1, "type", Ty::Str), f(2, "rollingUpdate", Ty::Msg(ROLLING_UPDATE))];
const DEPLOYMENT_SPEC: &[Field] = &[
    f(1, "replicas", Ty::OptInt),
    f(2, "selector", Ty::Msg(LABEL_SELECTOR)),
    f(3, "template", Ty::Msg(POD_TEMPLATE)),
    f(4, "strategy", Ty::Msg(STRATEGY)),
    f(5, "minReadySeconds", Ty::Int),
    f(6, "revisionHistoryLimit", Ty::OptInt),
    f(7, "paused", Ty::Bool),
    f(9, "progressDeadlineSeconds", Ty::OptInt),
];
const SERVICE_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "protocol", Ty::Str),
    f(3, "port", Ty::Int),
    f(4, "targetPort", Ty::IntOrString),
    f(5, "nodePort", Ty::Int),
    f(6, "appProtocol", Ty::Str),
];
const SERVICE_SPEC: &[Field] = &[
    r(1, "ports", Ty::Msg(SERVICE_PORT)),
    f(2, "selector", Ty::StrMap),
    f(3, "clusterIP", Ty::Str),
    f(4, "type", Ty::Str),
    r(5, "externalIPs", Ty::Str),
    f(7, "sessionAffinity", Ty::Str),
    f(10, "externalName", Ty::Str),
    f(11, "externalTrafficPolicy", Ty::Str),
    r(18, "clusterIPs", Ty::Str),
    f(22, "internalTrafficPolicy", Ty::Str),
];
const NAMESPACE_SPEC: &[Field] = &[r(1, "finalizers", Ty::Str)];
const BOUND_OBJECT_REF: &[Field] =
    &[f(1, "kind", Ty::Str), f(2, "apiVersion", Ty::Str), f(3, "name", Ty::Str), f(4, "uid", Ty::Str)];
const TOKEN_REQUEST_SPEC: &[Field] = &[
    r(1, "audiences", Ty::Str),
    f(3, "boundObjectRef", Ty::Msg(BOUND_OBJECT_REF)),
    f(4, "expirationSeconds", Ty::OptInt),
];
const QUANTITY: &[Field] = &[f(1, "string", Ty::Str)];

/// The kinds read, each: metadata, then its own fields (status is taken empty).
fn kind_fields(kind: &str) -> Option<&'static [Field]> {
    const META: Field = f(1, "metadata", Ty::Msg(OBJECT_META));
    static NAMESPACE: &[Field] = &[META, f(2, "spec", Ty::Msg(NAMESPACE_SPEC)), f(3, "status", Ty::Msg(EMPTY))];
    static SERVICE: &[Field] = &[META, f(2, "spec", Ty::Msg(SERVICE_SPEC)), f(3, "status", Ty::Msg(EMPTY))];
    static DEPLOYMENT: &[Field] = &[META, f(2, "spec", Ty::Msg(DEPLOYMENT_SPEC)), f(3, "status", Ty::Msg(EMPTY))];
    static CONFIG_MAP: &[Field] = &[META, f(2, "data", Ty::StrMap), f(4, "immutable", Ty::Bool)];
    static SERVICE_ACCOUNT: &[Field] = &[META];
    static TOKEN_REQUEST: &[Field] = &[META, f(2, "spec", Ty::Msg(TOKEN_REQUEST_SPEC)), f(3, "status", Ty::Msg(EMPTY))];
    Some(match kind {
        "Namespace" => NAMESPACE,
        "Service" => SERVICE,
        "Deployment" => DEPLOYMENT,
        "ConfigMap" => CONFIG_MAP,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "TokenRequest" => TOKEN_REQUEST,
        _ => return None,
    })
}

fn text(b: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

fn map_entry(b: &[u8]) -> Result<(String, &[u8]), String> {
    let (mut key, mut value) = (String::new(), &b[..0]);
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Bytes(k)) => key = text(k, "a map key")?,
            (2, Wire::Bytes(v)) => value = v,
            _ => return Err("a map entry that is not key and value".into()),
        }
    }
    Ok((key, value))
}

fn one(ty: Ty, w: Wire<'_>, path: &str) -> Result<Value, String> {
    let bad = || format!("{path}: not the type the Kubernetes API gives it");
    Ok(match (ty, w) {
        (Ty::Str, Wire::Bytes([])) => Value::Null,
        (Ty::Str, Wire::Bytes(b)) => json!(text(b, path)?),
        // int32 and int64 fields: negative numbers are ten-byte two's complement.
        (Ty::Int, Wire::Varint(0)) | (Ty::Bool, Wire::Varint(0)) => Value::Null,
        (Ty::Int | Ty::OptInt, Wire::Varint(v)) => json!(v as i64),
        (Ty::Bool, Wire::Varint(_)) => json!(true),
        (Ty::Msg(schema), Wire::Bytes(b)) => message(schema, b, path)?,
        (Ty::IntOrString, Wire::Bytes(b)) => {
            let (mut kind, mut int, mut s) = (0, 0i64, String::new());
            for (n, w) in fields(b)? {
                match (n, w) {
                    (1, Wire::Varint(v)) => kind = v,
                    (2, Wire::Varint(v)) => int = v as i64,
                    (3, Wire::Bytes(b)) => s = text(b, path)?,
                    _ => return Err(bad()),
                }
            }
            match (kind, int) {
                (1, _) => json!(s),
                (_, 0) => Value::Null,
                (_, n) => json!(n),
            }
        }
        (Ty::Time, Wire::Bytes(b)) => {
            let mut secs = 0i64;
            for (n, w) in fields(b)? {
                if let (1, Wire::Varint(v)) = (n, w) {
                    secs = v as i64;
                }
            }
            match jiff::Timestamp::from_second(secs) {
                Ok(t) if secs != 0 => json!(t.to_string()),
                _ => Value::Null,
            }
        }
        _ => return Err(bad()),
    })
}

fn message(schema: &'static [Field], buf: &[u8], path: &str) -> Result<Value, String> {
    let mut out = Map::new();
    for (n, w) in fields(buf)? {
        let Some(Field(_, name, ty, repeated)) = schema.iter().find(|fd| fd.0 == n) else {
            // Zero is nothing: Go writes every plain field, and empty messages (status).
            if matches!(w, Wire::Bytes([]) | Wire::Varint(0)) {
                continue;
            }
            return Err(format!("{path}: field {n} is not one this server reads from protobuf"));
        };
        let here = format!("{path}.{name}");
        match (ty, w) {
            (Ty::StrMap | Ty::QuantityMap, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b)?;
                let v = match ty {
                    Ty::QuantityMap => one(Ty::Msg(QUANTITY), Wire::Bytes(v), &here)?["string"].clone(),
                    _ => json!(text(v, &here)?),
                };
                out.entry(*name).or_insert_with(|| json!({}))[k] = v;
            }
            (ty, w) if *repeated => {
                // An element is kept even when empty: a list's length is what was sent.
                let v = match (ty, w) {
                    (Ty::Str, Wire::Bytes([])) => json!(""),
                    (ty, w) => one(*ty, w, &here)?,
                };
                match out.entry(*name).or_insert_with(|| json!([])) {
                    Value::Array(a) => a.push(v),
                    _ => return Err(format!("{here}: given twice")),
                }
            }
            (ty, w) => {
                let v = one(*ty, w, &here)?;
                if !v.is_null() {
                    out.insert((*name).to_string(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// The object in a protobuf body, as JSON; Err says what could not be read.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let rest = body.strip_prefix(MAGIC).ok_or("a protobuf body starts with k8s\\0")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &rest[..0]);
    for (n, w) in fields(rest)? {
        match (n, w) {
            (1, Wire::Bytes(tm)) => {
                for (n, w) in fields(tm)? {
                    match (n, w) {
                        (1, Wire::Bytes(b)) => api_version = text(b, "apiVersion")?,
                        (2, Wire::Bytes(b)) => kind = text(b, "kind")?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3, Wire::Bytes(enc)) if !enc.is_empty() => return Err("a compressed protobuf body".into()),
            _ => {}
        }
    }
    let schema = kind_fields(&kind).ok_or_else(|| format!("{kind} objects are not read from protobuf here"))?;
    let mut obj = message(schema, raw, &kind)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf writer for the tests: field `n` holding `bytes` (length-delimited) or
    /// a number.
    fn len(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut v = put(n << 3 | 2);
        v.extend(put(bytes.len() as u64));
        v.extend_from_slice(bytes);
        v
    }
    fn num(n: u64, x: u64) -> Vec<u8> {
        let mut v = put(n << 3);
        v.extend(put(x));
        v
    }
    fn put(mut x: u64) -> Vec<u8> {
        let mut v = Vec::new();
        loop {
            let b = (x & 0x7f) as u8;
            x >>= 7;
            if x == 0 {
                v.push(b);
                return v;
            }
            v.push(b | 0x80);
        }
    }
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let tm = [len(1, api_version.as_bytes()), len(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), len(1, &tm), len(2, raw), len(3, b""), len(4, b"")].concat()
    }
    fn entry(k: &str, v: &str) -> Vec<u8> {
        [len(1, k.as_bytes()), len(2, v.as_bytes())].concat()
    }

    #[test]
    fn kubectl_create_deployment_reads_as_the_json_it_stands_for() {
        let meta = [len(1, b"frontend"), len(3, b""), len(11, &entry("app", "frontend")), len(8, b"")].concat();
        let container = [len(1, b"nginx"), len(2, b"nginx"), len(8, b"")].concat();
        // Go writes plain fields unset too: hostPID (12) false, nodeName (10) "".
        let pod = [len(2, &container), num(12, 0), len(10, b"")].concat();
        let template = [len(1, &[len(11, &entry("app", "frontend")), len(8, b"")].concat()), len(2, &pod)].concat();
        let spec = [num(1, 2), len(2, &len(1, &entry("app", "frontend"))), len(3, &template), len(4, b"")].concat();
        let raw = [len(1, &meta), len(2, &spec), len(3, b"")].concat();
        let obj = to_json(&envelope("apps/v1", "Deployment", &raw)).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "frontend", "labels": {"app": "frontend"}},
                   "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "frontend"}}, "strategy": {},
                            "template": {"metadata": {"labels": {"app": "frontend"}},
                                         "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}}},
                   "status": {}})
        );
    }

    #[test]
    fn kubectl_create_token_reads_as_a_token_request() {
        let spec = [len(1, b"api"), num(4, 3600)].concat();
        // The status Go writes with nothing in it: an empty token and time.
        let raw = [len(1, &len(8, b"")), len(2, &spec), len(3, &[len(1, b""), len(2, b"")].concat())].concat();
        let obj = to_json(&envelope("authentication.k8s.io/v1", "TokenRequest", &raw)).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
                   "spec": {"audiences": ["api"], "expirationSeconds": 3600}, "status": {}})
        );
    }

    #[test]
    fn a_service_port_takes_a_number_or_a_name_as_target() {
        let by_number =
            [len(1, b"80-80"), len(2, b"TCP"), num(3, 80), len(4, &[num(1, 0), num(2, 8080)].concat())].concat();
        let by_name = [num(3, 53), len(4, &[num(1, 1), len(3, b"dns")].concat())].concat();
        let spec =
            [len(1, &by_number), len(1, &by_name), len(2, &entry("app", "web")), len(4, b"ClusterIP"), num(12, 0)]
                .concat();
        let raw = [len(1, &len(1, b"web")), len(2, &spec), len(3, b"")].concat();
        let obj = to_json(&envelope("v1", "Service", &raw)).unwrap();
        assert_eq!(
            obj["spec"]["ports"][0],
            json!({"name": "80-80", "protocol": "TCP", "port": 80, "targetPort": 8080})
        );
        assert_eq!(obj["spec"]["ports"][1], json!({"port": 53, "targetPort": "dns"}));
        assert_eq!(obj["spec"]["selector"], json!({"app": "web"}));
    }

    #[test]
    fn what_cannot_be_read_is_refused_never_dropped() {
        let raw = [len(1, &len(1, b"x")), len(2, &len(99, b"surprise"))].concat();
        let e = to_json(&envelope("v1", "Namespace", &raw)).unwrap_err();
        assert!(e.contains("field 99"), "{e}");
        assert!(to_json(&envelope("batch/v1", "Job", b"")).unwrap_err().contains("Job objects are not read"));
        assert!(to_json(b"{}").unwrap_err().contains("k8s\\0"));
        let cut = envelope("v1", "Namespace", &len(1, &len(1, b"x")));
        assert!(to_json(&cut[..cut.len() - 7]).is_err(), "a body cut short");
    }
}
