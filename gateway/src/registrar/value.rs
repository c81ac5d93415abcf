//! The registered value, the default instance id, and the health gate.

use std::net::SocketAddr;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::Registration;

/// `{service}-{version}-{env}-{8 random hex}`: unique per process, stable for its life.
pub fn default_instance_id(service: &str, version: Option<&str>, env: Option<&str>) -> String {
    format!(
        "{service}-{}-{}-{:08x}",
        version.unwrap_or("unversioned"),
        env.unwrap_or("default"),
        rand::random::<u32>()
    )
}

/// The JSON the discovery contract defines (docs/discovery.md).
pub fn instance_value(reg: &Registration, weight: u32) -> String {
    let mut value = serde_json::json!({
        "addr": reg.addr.to_string(),
        "weight": weight,
        "labels": reg.labels,
    });
    if let Some(version) = &reg.version {
        value["version"] = serde_json::Value::String(version.clone());
    }
    value.to_string()
}

/// Asks the local backend whether it is SERVING.
pub struct HealthGate {
    addr: SocketAddr,
    service: String,
    client: Option<HealthClient<tonic::transport::Channel>>,
}

impl HealthGate {
    pub fn new(addr: SocketAddr, service: String) -> Self {
        Self {
            addr,
            service,
            client: None,
        }
    }

    pub async fn serving(&mut self) -> bool {
        if self.client.is_none() {
            let Ok(endpoint) =
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            else {
                return false;
            };
            self.client = Some(HealthClient::new(
                endpoint
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy(),
            ));
        }
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        match tokio::time::timeout(Duration::from_secs(1), client.check(request)).await {
            Ok(Ok(r)) => r.into_inner().status == ServingStatus::Serving as i32,
            _ => false,
        }
    }
}
