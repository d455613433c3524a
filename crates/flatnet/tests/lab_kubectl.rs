//! kubectl on the lab's own control plane, as tutorials use it to look into pods:
//! `kubectl logs` and `kubectl exec` (with a TTY) go through the API server, which
//! hands them to the pod's kubelet API over TLS as kube-apiserver does; `attach` says
//! it is not served.

mod common;

use common::kubectl::kubectl;
use common::lab::Lab;
use common::sandboxed;

#[test]
fn kubectl_logs_and_exec_reach_the_pods_through_the_api_server() {
    sandboxed("kubectl_logs_and_exec_reach_the_pods_through_the_api_server", |_| {
        let lab = Lab::up(2, "vxlan");
        common::kubectl::logs_and_exec(&lab);
        let attach = kubectl(&lab, &["attach", "talker"]);
        let err = String::from_utf8_lossy(&attach.stderr);
        assert!(!attach.status.success() && err.contains("does not serve pods/attach"), "{err}");
        lab.down_and_check_clean();
    });
}
