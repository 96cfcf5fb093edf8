//! `docker pull`, `docker login` and the pull's cache with the stock docker CLI against
//! `appliance serve`, from Debian's docker-registry on 127.0.0.1 (plain HTTP, TLS with a test
//! CA, htpasswd auth), with images built here by hand and pushed into it with skopeo.

mod common;
mod registry_support;

use common::detached::text;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use registry_support::token::{self, TokenServer};
use registry_support::{
    layer, noise, succeeded, three_layer_image, Appliance, Image, Registry, RegistryOpts, TempDir,
};

fn push(reg: &Registry, image: &Image, dir: &TempDir, name: &str, tag: &str, creds: Option<&str>) {
    let layout = dir.0.join(format!("layout-{}", name.replace('/', "-")));
    image.write_layout(&layout, tag);
    reg.push(&layout, tag, name, creds);
}

/// A work directory and a plain-HTTP registry, for test `tag`.
fn plain_registry(tag: &str) -> (TempDir, Registry) {
    (
        TempDir::new(tag),
        Registry::start(tag, RegistryOpts::default()),
    )
}

/// `docker pull NAME` downloads `image`, which `docker images` then lists, alone, as NAME.
fn pulled(app: &Appliance, name: &str, image: &Image) {
    let out = app.ok(&["pull", name]);
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {name}")),
        "{out}"
    );
    assert_eq!(app.images(), [format!("{} {name}", image.id())]);
}

#[test]
fn pull_of_a_three_layer_image_over_http_then_images_lists_its_config_digest() {
    let (dir, reg) = plain_registry("three");
    let image = three_layer_image();
    push(&reg, &image, &dir, "tether/three", "v1", None);
    let app = Appliance::start("three", &[]);
    let name = format!("{}/tether/three:v1", reg.addr);

    let out = app.ok(&["pull", &name]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "v1: Pulling from tether/three", "{out}");
    for i in 0..3 {
        let id = &image.layer_digest(i)[7..19];
        for step in [
            "Pulling fs layer",
            "Verifying Checksum",
            "Download complete",
            "Pull complete",
        ] {
            assert!(
                lines.contains(&format!("{id}: {step}").as_str()),
                "{id} {step}:\n{out}"
            );
        }
    }
    let n = lines.len();
    assert_eq!(lines[n - 3], format!("Digest: {}", image.manifest_digest()));
    assert_eq!(
        lines[n - 2],
        format!("Status: Downloaded newer image for {name}")
    );
    assert_eq!(lines[n - 1], name);

    // The id is the config's digest, which the registry's manifest names.
    assert_eq!(app.images(), [format!("{} {name}", image.id())]);
    let i = app.inspect(&name);
    assert_eq!(i["Id"], image.id().as_str());
    let by_digest = format!("{}/tether/three@{}", reg.addr, image.manifest_digest());
    assert_eq!(i["RepoDigests"], serde_json::json!([by_digest]));
    assert_eq!(i["RootFS"]["Layers"].as_array().unwrap().len(), 3);
    assert_eq!(
        i["Config"]["Cmd"],
        serde_json::json!(["/bin/busybox", "cat", "/etc/greeting"])
    );

    // Pulled again, by tag and by digest: nothing is downloaded.
    let gets = reg.blob_gets(&image.layer_digest(0));
    assert_eq!(gets, 1);
    let again = app.ok(&["pull", &name]);
    assert!(
        again.contains(&format!("Status: Image is up to date for {name}")),
        "{again}"
    );
    let d = app.ok(&["pull", &by_digest]);
    assert!(
        d.contains(&format!("Status: Image is up to date for {by_digest}")),
        "{d}"
    );
    assert_eq!(reg.blob_gets(&image.layer_digest(0)), 1);

    // The cache (0700 directories) keeps no blob once the image is built (tests/pull_keeps.rs
    // has the blobs of a pull in flight); no work directory is left.
    let (entries, blobs) = app.store_entries();
    assert_eq!(
        entries,
        [image.id()[7..].to_string(), "blobs".into()],
        "{entries:?}"
    );
    assert!(blobs.is_empty(), "{blobs:?}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&app.home.join("images/blobs")), 0o700);
    assert_eq!(mode(&app.home.join("images/blobs/sha256")), 0o700);
}

#[test]
fn a_multi_platform_index_resolves_to_linux_amd64() {
    let (dir, reg) = plain_registry("index");
    let amd = three_layer_image();
    let arm = Image::new(amd.layers.clone(), "arm64", &["/bin/busybox", "true"]);
    // A layout whose index names a nested index of both platforms, pushed with --all.
    let layout = dir.0.join("layout");
    amd.write_layout(&layout, "x");
    arm.write_layout(&dir.0.join("arm"), "x");
    for f in std::fs::read_dir(dir.0.join("arm/blobs/sha256"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(f.path(), layout.join("blobs/sha256").join(f.file_name())).unwrap();
    }
    let entry = |i: &Image, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": i.manifest_digest(), "size": i.manifest.len(),
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&arm, "arm64"), entry(&amd, "amd64")],
    }))
    .unwrap();
    let nested_digest = format!("sha256:{}", registry_support::sha256_hex(&nested));
    std::fs::write(
        layout.join("blobs/sha256").join(&nested_digest[7..]),
        &nested,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nested_digest, "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", layout.display()))
        .arg(format!("docker://{}/tether/multi:multi", reg.addr))
        .env("HOME", &dir.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let app = Appliance::start("index", &[]);
    let name = format!("{}/tether/multi:multi", reg.addr);
    let out = app.ok(&["pull", &name]);
    // The digest shown is the index's; the image is the amd64 one.
    assert!(out.contains(&format!("Digest: {nested_digest}")), "{out}");
    assert_eq!(app.inspect(&name)["Id"], amd.id().as_str());
    assert_eq!(app.inspect(&name)["Architecture"], "amd64");
}

#[test]
fn pull_over_tls_verifies_against_the_test_ca() {
    let dir = TempDir::new("tls");
    let common::test_ca::TestCerts {
        ca_pem,
        cert_pem,
        key_pem,
    } = common::test_ca::write_test_ca(
        &dir.0,
        "tether registry test CA",
        &["127.0.0.1", "localhost"],
    );

    let reg = Registry::start(
        "tls",
        RegistryOpts {
            tls: Some((cert_pem, key_pem)),
            ..Default::default()
        },
    );
    let image = three_layer_image();
    push(&reg, &image, &dir, "tether/tls", "v1", None);
    let name = format!("{}/tether/tls:v1", reg.addr);

    // Without the CA the certificate does not verify, and plain HTTP is not tried on a
    // registry that speaks TLS.
    let untrusting = Appliance::start("tls-no-ca", &[]);
    let err = untrusting.fails(&["pull", &name]);
    assert!(err.contains(&name) && err.contains("certificate"), "{err}");
    assert!(err.contains(&format!("https://{}/v2/", reg.addr)), "{err}");
    assert!(untrusting.images().is_empty());

    let app = Appliance::start("tls", &["--registry-ca", ca_pem.to_str().unwrap()]);
    pulled(&app, &name, &image);
}

/// The three-layer image pushed to `reg` as `tether/private:v1` with `creds`, an appliance for
/// test `tag`, and the image's name to pull.
fn private_image(
    reg: &Registry,
    dir: &TempDir,
    tag: &str,
    creds: &str,
) -> (Image, Appliance, String) {
    let image = three_layer_image();
    push(reg, &image, dir, "tether/private", "v1", Some(creds));
    let name = format!("{}/tether/private:v1", reg.addr);
    (image, Appliance::start(tag, &[]), name)
}

#[test]
fn docker_login_then_pull_from_an_htpasswd_registry() {
    let dir = TempDir::new("auth");
    let htpasswd = dir.0.join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "tether", "s3cret pass"])
        .output()
        .expect("htpasswd (Debian's apache2-utils): run make deps");
    assert!(out.status.success());
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let reg = Registry::start(
        "auth",
        RegistryOpts {
            htpasswd: Some(htpasswd),
            ..Default::default()
        },
    );
    let (image, app, name) = private_image(&reg, &dir, "auth", "tether:s3cret pass");

    // Anonymous: refused, and said so.
    let err = app.fails(&["pull", &name]);
    assert!(err.contains(&name) && err.contains("unauthorized"), "{err}");

    // A wrong password: docker login fails with the registry's answer and stores nothing.
    let err = app.fails_stdin(
        &["login", "-u", "tether", "--password-stdin", &reg.addr],
        Some(b"wrong\n"),
    );
    assert!(err.contains("401 Unauthorized"), "{err}");
    assert!(err.contains(&format!("http://{}/v2/", reg.addr)), "{err}");

    let out = app.docker_stdin(
        &["login", "-u", "tether", "--password-stdin", &reg.addr],
        Some(b"s3cret pass\n"),
    );
    assert!(succeeded(&out, "docker login", "").contains("Login Succeeded"));

    // The CLI now sends the credentials (X-Registry-Auth) and the pull goes through.
    pulled(&app, &name, &image);
}

#[test]
fn concurrent_pulls_of_two_images_sharing_a_base_download_it_once() {
    let (dir, reg) = plain_registry("shared");
    // 24 MiB that do not compress: a download that takes a while.
    let base = layer(&[("opt/base.bin", 0o644, &noise(24 << 20, 7))]);
    let a = Image::new(
        vec![base.clone(), layer(&[("etc/a", 0o644, b"a\n")])],
        "amd64",
        &["/bin/true"],
    );
    let b = Image::new(
        vec![base, layer(&[("etc/b", 0o644, b"b\n")])],
        "amd64",
        &["/bin/true"],
    );
    push(&reg, &a, &dir, "tether/a", "v1", None);
    push(&reg, &b, &dir, "tether/b", "v1", None);
    let base_digest = a.layer_digest(0);
    assert_eq!(base_digest, b.layer_digest(0));
    let before = reg.blob_gets(&base_digest);
    assert_eq!(before, 0);

    let app = Appliance::start("shared", &[]);
    let spawn = |name: String| {
        app.docker_command(&["pull", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (na, nb) = (
        format!("{}/tether/a:v1", reg.addr),
        format!("{}/tether/b:v1", reg.addr),
    );
    let pa = spawn(na.clone());
    let pb = spawn(nb.clone());
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    for o in [&oa, &ob] {
        succeeded(o, "docker pull", &app.log());
    }
    assert_eq!(reg.blob_gets(&base_digest), 1, "{}", reg.log());
    let mut want = vec![format!("{} {na}", a.id()), format!("{} {nb}", b.id())];
    want.sort();
    assert_eq!(app.images(), want);
    // One of them found the base downloaded, or being downloaded, by the other.
    let both = format!("{}{}", text(&oa.stdout), text(&ob.stdout));
    let short = &base_digest[7..19];
    assert_eq!(
        both.matches(&format!("{short}: Download complete")).count(),
        1,
        "{both}"
    );
}

#[test]
fn docker_create_of_a_missing_image_gets_the_404_the_cli_pulls_on() {
    let (dir, reg) = plain_registry("create");
    let image = three_layer_image();
    push(&reg, &image, &dir, "tether/create", "v1", None);
    let app = Appliance::start("create", &[]);
    let name = format!("{}/tether/create:v1", reg.addr);
    let out = app.docker(&["create", "--name", "c1", &name]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("Unable to find image '{name}' locally")),
        "{err}"
    );
    assert!(
        err.contains(&format!("Status: Downloaded newer image for {name}")),
        "{err}"
    );
    assert_eq!(app.ok(&["inspect", "-f", "{{.Name}}", "c1"]).trim(), "/c1");
    assert_eq!(app.images(), [format!("{} {name}", image.id())]);
    // A name the registry does not have: the pull's 404, on which the CLI exits 1.
    let missing = format!("{}/tether/none:v1", reg.addr);
    let out = app.docker(&["create", &missing]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("manifest unknown") && err.contains("tether/none:v1"),
        "{err}"
    );
}

#[test]
fn an_identity_token_from_docker_login_buys_pull_tokens_by_the_refresh_grant() {
    let dir = TempDir::new("identity");
    let tokens = TokenServer::start(&dir.0, "tether", "s3cret");
    let reg = Registry::start(
        "identity",
        RegistryOpts {
            token_auth: Some(tokens.registry_auth()),
            ..Default::default()
        },
    );
    let (image, app, name) = private_image(&reg, &dir, "identity", "tether:s3cret");

    // docker login: the token server gives a refresh token, which the CLI keeps instead of
    // the password (its identity token).
    let out = app.docker_stdin(
        &["login", "-u", "tether", "--password-stdin", &reg.addr],
        Some(b"s3cret\n"),
    );
    assert!(succeeded(&out, "docker login", "").contains("Login Succeeded"));
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(app.docker_config.as_ref().unwrap().join("config.json")).unwrap(),
    )
    .unwrap();
    let kept = &config["auths"][&reg.addr];
    let identity = kept["identitytoken"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(identity.starts_with("refresh-"), "{config}");
    let login = tokens.requests();
    let asked = login.last().unwrap();
    assert_eq!(
        (asked.method.as_str(), asked.user.as_deref()),
        ("GET", Some("tether"))
    );
    assert_eq!(asked.params["offline_token"], "true");

    // docker pull: the CLI sends the identity token, which the engine trades for a pull token
    // by the OAuth2 refresh grant, as dockerd does; the registry takes that token.
    pulled(&app, &name, &image);
    let grants: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(grants.len(), 1, "{grants:?}");
    let p = &grants[0].params;
    assert_eq!(p["grant_type"], "refresh_token");
    assert_eq!(p["refresh_token"], identity);
    assert_eq!(p["service"], token::SERVICE);
    assert_eq!(p["scope"], "repository:tether/private:pull");
    assert_eq!(p["client_id"], "docker");
    assert_eq!(grants[0].user, None, "no password goes with the grant");

    // A login with what the CLI keeps (POST /auth with the identity token, as the CLI sends it
    // for stored credentials): checked by the grant without a scope, as dockerd checks it.
    let body = serde_json::json!({
        "username": "tether", "identitytoken": identity, "serveraddress": reg.addr,
    });
    let out = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(app.home.join("docker.sock"))
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
        ])
        .arg("http://localhost/auth")
        .output()
        .expect("curl (Debian's curl): run make deps");
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(said["Status"], "Login Succeeded", "{}", text(&out.stdout));
    assert_eq!(said["IdentityToken"], identity.as_str());
    let last = tokens.requests().pop().unwrap();
    assert_eq!(last.method, "POST", "{last:?}");
    assert_eq!(last.params["refresh_token"], identity);
    assert!(!last.params.contains_key("scope"), "{last:?}");

    // A refresh token the server no longer takes: the pull fails naming the image and why.
    tokens.revoke_all();
    push(
        &reg,
        &image,
        &dir,
        "tether/other",
        "v1",
        Some("tether:s3cret"),
    );
    let other = format!("{}/tether/other:v1", reg.addr);
    let err = app.fails(&["pull", &other]);
    assert!(
        err.contains("tether/other") && err.contains("unauthorized"),
        "{err}"
    );
    assert!(err.contains("refused the identity token"), "{err}");
}
