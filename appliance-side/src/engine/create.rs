//! docker's create request (`POST /containers/create`) to a container record: the request's
//! Config and HostConfig, with the image's config as the default, merged as dockerd merges them.

use serde_json::Value;

use guestinfo::contract::DOCKER_DEFAULT_CAPS;

use crate::engine::{Engine, EngineError};
use crate::store::images::ImageConfig;
use crate::store::records::{self, ContainerOptions, NewContainer, Record};

/// What an image contributes to a container's config: its id and its config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// `sha256:...`; empty for an image given as a path.
    pub id: String,
    pub config: ImageConfig,
}

fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect(),
        ),
        _ => None,
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// The request's env, then every image variable the request does not set (dockerd's order), and
/// docker's default PATH when neither sets one.
fn merge_env(user: Vec<String>, image: &[String]) -> Vec<String> {
    let mut env = user;
    for e in image {
        if !env.iter().any(|u| env_key(u) == env_key(e)) {
            env.push(e.clone());
        }
    }
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.push(format!("PATH={}", guestinfo::contract::DEFAULT_PATH));
    }
    env
}

/// The container a create request asks for. `name` is the `?name=` query.
pub fn new_container(
    body: &Value,
    name: Option<String>,
    image: &ImageDefaults,
) -> Result<NewContainer, EngineError> {
    let bad = EngineError::BadRequest;
    let c = body;
    let h = &body["HostConfig"];
    let user_entrypoint = strings(&c["Entrypoint"]);
    let user_cmd = strings(&c["Cmd"]).unwrap_or_default();
    // dockerd: an image's Cmd applies only when the request gives no entrypoint; `--entrypoint ''`
    // (sent as [""]) clears the image's entrypoint and its Cmd with it.
    let (entrypoint, cmd) = match user_entrypoint {
        Some(e) if !e.is_empty() => (e, user_cmd),
        _ => {
            let cmd = if user_cmd.is_empty() {
                image.config.cmd.clone().unwrap_or_default()
            } else {
                user_cmd
            };
            (image.config.entrypoint.clone().unwrap_or_default(), cmd)
        }
    };
    let entrypoint: Vec<String> = if entrypoint.len() == 1 && entrypoint[0].is_empty() {
        Vec::new()
    } else {
        entrypoint
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd.iter()).cloned().collect();
    if args.is_empty() {
        return Err(bad("No command specified".into()));
    }
    let mut labels = image.config.labels.clone();
    if let Some(l) = c["Labels"].as_object() {
        for (k, v) in l {
            labels.insert(k.clone(), text(v));
        }
    }
    let or = |user: String, image: &str| {
        if user.is_empty() {
            image.to_string()
        } else {
            user
        }
    };
    let memory = h["Memory"].as_u64().unwrap_or(0);
    let nano_cpus = h["NanoCpus"].as_u64().unwrap_or(0);
    let cpu_count = h["CpuCount"].as_u64().unwrap_or(0);
    let cpus = nano_cpus.div_ceil(1_000_000_000).max(cpu_count);
    let ulimits = h["Ulimits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            format!(
                "{}={}:{}",
                text(&u["Name"]),
                u["Soft"].as_i64().unwrap_or(-1),
                u["Hard"].as_i64().unwrap_or(-1)
            )
        })
        .collect();
    let console_size = h["ConsoleSize"]
        .as_array()
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()? as u16, a[1].as_u64()? as u16)))
        .filter(|(rows, cols)| *rows > 0 && *cols > 0);
    let options = ContainerOptions {
        image_id: image.id.clone(),
        entrypoint,
        cmd,
        working_dir: or(text(&c["WorkingDir"]), &image.config.working_dir),
        user: or(text(&c["User"]), &image.config.user),
        hostname: text(&c["Hostname"]),
        domainname: text(&c["Domainname"]),
        labels,
        stop_signal: or(
            text(&c["StopSignal"]),
            image.config.stop_signal.as_deref().unwrap_or(""),
        ),
        stop_timeout: c["StopTimeout"].as_u64().map(|t| t as u32),
        stdin_once: c["StdinOnce"].as_bool().unwrap_or(false),
        attach_stdin: c["AttachStdin"].as_bool().unwrap_or(false),
        attach_stdout: c["AttachStdout"].as_bool().unwrap_or(false),
        attach_stderr: c["AttachStderr"].as_bool().unwrap_or(false),
        memory_mb: memory.div_ceil(1024 * 1024) as u32,
        cpus: cpus as u32,
        auto_remove: h["AutoRemove"].as_bool().unwrap_or(false),
        restart_policy: text(&h["RestartPolicy"]["Name"]),
        restart_max: h["RestartPolicy"]["MaximumRetryCount"]
            .as_u64()
            .unwrap_or(0) as u32,
        ulimits,
        cap_add: strings(&h["CapAdd"]).unwrap_or_default(),
        cap_drop: strings(&h["CapDrop"]).unwrap_or_default(),
        extra_hosts: strings(&h["ExtraHosts"]).unwrap_or_default(),
        dns: strings(&h["Dns"]).unwrap_or_default(),
        dns_search: strings(&h["DnsSearch"]).unwrap_or_default(),
        console_size,
        transport: match text(&h["TetherTransport"]).as_str() {
            "" | "virtio" => String::new(),
            "serial" => "serial".into(),
            other => {
                return Err(bad(format!(
                    "TetherTransport {other:?}: use virtio or serial"
                )))
            }
        },
        mounts: crate::engine::mounts::parse(body, &image.config)?,
        ..Default::default()
    };
    if memory > 0 && options.memory_mb < MIN_MEMORY_MB {
        return Err(bad(format!(
            "Minimum memory limit allowed is {MIN_MEMORY_MB}MB: a containerVM needs room for its kernel"
        )));
    }
    if let Some(bad_cap) = options
        .cap_add
        .iter()
        .find(|c| !DOCKER_DEFAULT_CAPS.contains(&normal_cap(c).as_str()))
    {
        return Err(bad(format!(
            "--cap-add {bad_cap}: only docker's default capabilities are available in a containerVM today"
        )));
    }
    Ok(NewContainer {
        name,
        args,
        env: merge_env(strings(&c["Env"]).unwrap_or_default(), &image.config.env),
        dir: options.working_dir.clone(),
        user: options.user.clone(),
        tty: c["Tty"].as_bool().unwrap_or(false),
        open_stdin: c["OpenStdin"].as_bool().unwrap_or(false),
        attach: false,
        image: text(&c["Image"]),
        options,
    })
}

impl Engine {
    /// docker create: the image resolved, its config merged, the name checked, the record made.
    pub fn create(&self, body: &Value, name: Option<String>) -> Result<Record, EngineError> {
        let reference = text(&body["Image"]);
        if reference.is_empty() {
            return Err(EngineError::BadRequest(
                "no image given: a container needs an Image".into(),
            ));
        }
        let image = self.image_defaults(&reference)?;
        let mut new = new_container(body, name, &image)?;
        // Volumes first (made if missing), held until the record that uses them exists.
        let _refs = self.volume_refs.lock().expect("volume refs lock");
        let made = self.provide_volumes(&mut new.options.mounts)?;
        let _names = self.names.lock().expect("names lock");
        self.network_request(body, &image.config.exposed_ports)
            .inspect_err(|_| self.discard_volumes(&made))?
            .apply(&mut new.options);
        let (rec, _) = records::create(self.home(), &new).inspect_err(|_| {
            self.discard_volumes(&made);
        })?;
        self.emit("create", &rec, &[]);
        Ok(rec)
    }

    /// What the image brings: from the image store, or (for `appliance run`'s absolute paths
    /// to an image on disk) nothing.
    fn image_defaults(&self, reference: &str) -> Result<ImageDefaults, EngineError> {
        if let Some(image) = self.images.resolve(reference) {
            return Ok(ImageDefaults {
                id: image.id,
                config: image.config,
            });
        }
        if reference.starts_with('/') && std::path::Path::new(reference).exists() {
            return Ok(ImageDefaults::default());
        }
        Err(EngineError::NoSuchImage(reference.to_string()))
    }
}

/// The smallest VM tether and a kernel fit in.
pub const MIN_MEMORY_MB: u32 = 64;

fn normal_cap(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    up.strip_prefix("CAP_").unwrap_or(&up).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image() -> ImageDefaults {
        ImageDefaults {
            id: "sha256:abc".into(),
            config: ImageConfig {
                entrypoint: Some(vec!["/bin/entry".into()]),
                cmd: Some(vec!["serve".into(), "--port=80".into()]),
                env: vec![
                    "PATH=/opt/bin:/bin".into(),
                    "MODE=image".into(),
                    "KEEP=1".into(),
                ],
                working_dir: "/srv".into(),
                user: "app".into(),
                labels: [("from".to_string(), "image".to_string())].into(),
                stop_signal: Some("SIGQUIT".into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_image_config_is_the_default() {
        let n = new_container(&json!({"Image": "app"}), None, &image()).unwrap();
        assert_eq!(n.args, ["/bin/entry", "serve", "--port=80"]);
        assert_eq!(n.env, ["PATH=/opt/bin:/bin", "MODE=image", "KEEP=1"]);
        assert_eq!((n.dir.as_str(), n.user.as_str()), ("/srv", "app"));
        assert_eq!(n.options.stop_signal, "SIGQUIT");
        assert_eq!(n.options.image_id, "sha256:abc");
    }

    #[test]
    fn the_request_overrides_as_dockerd_merges() {
        let body = json!({
            "Image": "app", "Cmd": ["status"], "Env": ["MODE=user", "EXTRA=2"],
            "WorkingDir": "/tmp", "User": "0:0", "Labels": {"from": "user", "x": "y"},
        });
        let n = new_container(&body, Some("web".into()), &image()).unwrap();
        // A Cmd replaces the image's Cmd but keeps its entrypoint.
        assert_eq!(n.args, ["/bin/entry", "status"]);
        assert_eq!(
            n.env,
            ["MODE=user", "EXTRA=2", "PATH=/opt/bin:/bin", "KEEP=1"]
        );
        assert_eq!((n.dir.as_str(), n.user.as_str()), ("/tmp", "0:0"));
        assert_eq!(n.options.labels["from"], "user");
        assert_eq!(n.options.labels["x"], "y");
        assert_eq!(n.name.as_deref(), Some("web"));
    }

    #[test]
    fn an_empty_entrypoint_clears_the_images_entrypoint_and_cmd() {
        let body = json!({"Image": "app", "Entrypoint": [""], "Cmd": ["/bin/sh", "-c", "echo"]});
        let n = new_container(&body, None, &image()).unwrap();
        assert_eq!(n.args, ["/bin/sh", "-c", "echo"]);
        let body = json!({"Image": "app", "Entrypoint": [""]});
        let e = new_container(&body, None, &image()).unwrap_err();
        assert!(e.to_string().contains("No command specified"), "{e}");
        let body = json!({"Image": "app", "Entrypoint": ["/bin/other"]});
        let n = new_container(&body, None, &image()).unwrap();
        assert_eq!(
            n.args,
            ["/bin/other"],
            "a new entrypoint drops the image's Cmd"
        );
    }

    #[test]
    fn host_config_sizes_the_vm_and_refuses_what_it_cannot_honour() {
        let body = json!({"Image": "x", "Cmd": ["a"], "HostConfig": {
            "Memory": 512u64 * 1024 * 1024 + 1, "NanoCpus": 1_500_000_000u64,
            "AutoRemove": true, "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
            "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}], "ConsoleSize": [40, 120],
        }});
        let n = new_container(&body, None, &ImageDefaults::default()).unwrap();
        assert_eq!((n.options.memory_mb, n.options.cpus), (513, 2));
        assert!(n.options.auto_remove);
        assert_eq!(n.options.restart_policy, "on-failure");
        assert_eq!(n.options.ulimits, ["nofile=1024:2048"]);
        assert_eq!(n.options.console_size, Some((40, 120)));
        assert!(n.env.iter().any(|e| e.starts_with("PATH=")));
        let binds = json!({"Image": "x", "Cmd": ["a"], "HostConfig": {"Binds": ["/etc:/x"]}});
        let e = new_container(&binds, None, &ImageDefaults::default()).unwrap_err();
        assert!(e.to_string().contains("/etc:/x"), "{e}");
        let small = json!({"Image": "x", "Cmd": ["a"], "HostConfig": {"Memory": 4_000_000}});
        assert!(new_container(&small, None, &ImageDefaults::default()).is_err());
    }
}
