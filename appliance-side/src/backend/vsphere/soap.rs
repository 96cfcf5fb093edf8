//! A small typed SOAP layer for the vSphere API (vim25), limited to the calls the backend
//! makes: requests are written as text (every value escaped), answers read into a DOM
//! (roxmltree) and picked apart by element name; a SOAP fault becomes a [`Fault`] naming the
//! vSphere fault type (InvalidLogin, DuplicateName, FileNotFound, ...). The session is the
//! `vmware_soap_session` cookie Login answers with.

use std::sync::Mutex;

use thiserror::Error;

/// The vim25 release the requests are written against (what `SOAPAction` names).
const VIM_VERSION: &str = "urn:vim25/7.0";

#[derive(Debug, Error)]
pub enum SoapError {
    #[error("vSphere at {url}: {}", chain(.source))]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("vSphere answered HTTP {status} without a SOAP fault: {body}")]
    Status { status: u16, body: String },
    #[error("vSphere's answer is not XML: {0}")]
    Xml(String),
    #[error("vSphere's answer to {call} has no {what}")]
    Missing { call: &'static str, what: String },
    #[error("{0}")]
    Fault(Fault),
}

/// An error and its causes, `: `-joined (reqwest's own message names no TLS failure).
fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// A SOAP fault: the vSphere fault type (from `detail`) and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: String,
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vSphere fault {}: {}", self.kind, self.message)
    }
}

/// A managed object reference: its type and id (`VirtualMachine`, `vm-42`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoRef {
    pub kind: String,
    pub id: String,
}

impl MoRef {
    pub fn new(kind: &str, id: &str) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
        }
    }

    /// `<name type="kind">id</name>`.
    pub fn xml(&self, name: &str) -> String {
        format!(
            "<{name} type=\"{}\">{}</{name}>",
            escape(&self.kind),
            escape(&self.id)
        )
    }
}

/// XML-escapes text for an element's content or an attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `<name>text</name>`, escaped.
pub fn el(name: &str, text: &str) -> String {
    format!("<{name}>{}</{name}>", escape(text))
}

/// One SOAP endpoint (`https://vcenter/sdk`) and its session.
pub struct Soap {
    http: reqwest::Client,
    url: String,
    cookie: Mutex<Option<String>>,
}

impl Soap {
    pub fn new(http: reqwest::Client, url: String) -> Self {
        Self {
            http,
            url,
            cookie: Mutex::new(None),
        }
    }

    /// The HTTP client (the datastore file service shares it).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The SDK endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The session cookie (`vmware_soap_session=…`), once logged in.
    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().expect("lock").clone()
    }

    /// Calls `method` with the body's inner XML; the answer's document text.
    pub async fn call(&self, method: &str, inner: &str) -> Result<String, SoapError> {
        let envelope = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
             <soapenv:Body><{method} xmlns=\"urn:vim25\">{inner}</{method}></soapenv:Body>\
             </soapenv:Envelope>"
        );
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", VIM_VERSION)
            .body(envelope);
        if let Some(c) = self.cookie.lock().expect("lock").clone() {
            req = req.header("Cookie", c);
        }
        let http = |source| SoapError::Http {
            url: self.url.clone(),
            source,
        };
        let resp = req.send().await.map_err(http)?;
        if let Some(set) = resp.headers().get("set-cookie") {
            if let Some(pair) = set.to_str().ok().and_then(|s| s.split(';').next()) {
                *self.cookie.lock().expect("lock") = Some(pair.to_string());
            }
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(http)?;
        if let Some(fault) = fault_in(&body)? {
            return Err(SoapError::Fault(fault));
        }
        if status != 200 {
            return Err(SoapError::Status {
                status,
                body: body.chars().take(300).collect(),
            });
        }
        Ok(body)
    }
}

/// The fault in an answer, if it is one.
fn fault_in(body: &str) -> Result<Option<Fault>, SoapError> {
    let doc = parse(body)?;
    let Some(fault) = doc.descendants().find(|n| n.tag_name().name() == "Fault") else {
        return Ok(None);
    };
    let message = child_text(fault, "faultstring").unwrap_or_default();
    // `<detail><InvalidLoginFault xsi:type="InvalidLogin"/></detail>`: the type names it.
    let kind = fault
        .children()
        .find(|n| n.tag_name().name() == "detail")
        .and_then(|d| d.children().find(|n| n.is_element()))
        .map(|n| {
            xsi_type(n).unwrap_or_else(|| n.tag_name().name().trim_end_matches("Fault").to_string())
        })
        .unwrap_or_else(|| "Fault".into());
    Ok(Some(Fault { kind, message }))
}

pub fn parse(body: &str) -> Result<roxmltree::Document<'_>, SoapError> {
    roxmltree::Document::parse(body).map_err(|e| SoapError::Xml(e.to_string()))
}

/// An element's `xsi:type`, without a namespace prefix.
pub fn xsi_type(n: roxmltree::Node<'_, '_>) -> Option<String> {
    n.attributes()
        .find(|a| {
            a.name() == "type"
                && a.namespace()
                    .is_some_and(|ns| ns.contains("XMLSchema-instance"))
        })
        .map(|a| a.value().rsplit(':').next().unwrap_or_default().to_string())
}

/// The text of `n`'s first child element named `name`.
pub fn child_text(n: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    n.children()
        .find(|c| c.tag_name().name() == name)
        .map(|c| c.text().unwrap_or_default().to_string())
}

/// The first element named `name` anywhere in the document.
pub fn find<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    doc.descendants().find(|n| n.tag_name().name() == name)
}

/// A `MoRef` from an element holding one (`<returnval type="Task">task-1</returnval>`).
pub fn moref(n: roxmltree::Node<'_, '_>) -> Option<MoRef> {
    // The un-namespaced `type`: vcsim also writes `xsi:type="ManagedObjectReference"`, first.
    let kind = n
        .attributes()
        .find(|a| a.name() == "type" && a.namespace().is_none())?
        .value();
    Some(MoRef::new(kind, n.text()?.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_names_its_vsphere_type() {
        let body = r#"<?xml version="1.0"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode>
<faultstring>Login failure</faultstring>
<detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail>
</soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(
            fault_in(body).unwrap(),
            Some(Fault {
                kind: "InvalidLogin".into(),
                message: "Login failure".into()
            })
        );
        let doc = parse(
            r#"<val xmlns:x="http://www.w3.org/2001/XMLSchema-instance"><result x:type="ManagedObjectReference" type="VirtualMachine">vm-57</result></val>"#,
        )
        .unwrap();
        assert_eq!(
            find(&doc, "result").and_then(moref),
            Some(MoRef::new("VirtualMachine", "vm-57"))
        );
        let ok = r#"<Envelope><Body><LoginResponse><returnval/></LoginResponse></Body></Envelope>"#;
        assert_eq!(fault_in(ok).unwrap(), None);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            el("name", "a<b>&\"c'"),
            "<name>a&lt;b&gt;&amp;&quot;c&apos;</name>"
        );
        assert_eq!(
            MoRef::new("Folder", "group-v3").xml("_this"),
            "<_this type=\"Folder\">group-v3</_this>"
        );
    }
}
