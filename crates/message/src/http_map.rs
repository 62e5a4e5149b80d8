//! Conversions between [`RestRequest`]/[`RestResponse`] and the `http` crate's types.
//!
//! Content-Type travels as `dataFormat` (see [`Content`]), Content-Length is recomputed from
//! the bytes, and Content-Encoding cannot travel at all, so none of the three is ever put in
//! `headers`. Hop-by-hop headers (RFC 9110 section 7.6.1) belong to one connection and are
//! dropped in both directions.

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::content::Content;
use crate::rest::{NameValue, RestRequest, RestResponse};
use crate::{Error, Result};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Whether a header never travels in `headers`.
fn is_excluded(name: &str) -> bool {
    name.eq_ignore_ascii_case(CONTENT_TYPE.as_str())
        || name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str())
        || name.eq_ignore_ascii_case(CONTENT_ENCODING.as_str())
        || name.eq_ignore_ascii_case("upgrade")
        || HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Reads the headers and the body of an HTTP message into envelope form.
fn from_http_parts(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<NameValue>, Content)> {
    if let Some(encoding) = headers.get(CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(Error::ContentEncoding(encoding.into_owned()));
        }
    }
    let mut list = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if is_excluded(name.as_str()) {
            continue;
        }
        let value =
            std::str::from_utf8(value.as_bytes()).map_err(|_| Error::Header(name.as_str().to_owned()))?;
        list.push(NameValue::new(name.as_str(), value));
    }
    let content_type = match headers.get(CONTENT_TYPE) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| Error::Header(CONTENT_TYPE.as_str().to_owned()))?),
    };
    Ok((list, Content::from_http(content_type, body)))
}

/// Writes envelope headers and content into an HTTP header map; returns the body bytes.
fn to_http_parts(list: &[NameValue], content: &Content, headers: &mut HeaderMap) -> Result<Vec<u8>> {
    for nv in list {
        if is_excluded(&nv.name) {
            continue;
        }
        let name = HeaderName::from_bytes(nv.name.as_bytes()).map_err(|_| Error::Header(nv.name.clone()))?;
        let value = HeaderValue::from_str(&nv.value).map_err(|_| Error::Header(nv.name.clone()))?;
        headers.append(name, value);
    }
    if let Some(media) = content.media_type() {
        let value =
            HeaderValue::from_str(media).map_err(|_| Error::Header(CONTENT_TYPE.as_str().to_owned()))?;
        headers.insert(CONTENT_TYPE, value);
    }
    let body = content.to_bytes();
    if !body.is_empty() {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Ok(body)
}

/// Appends `queryStrings` to a path with the right separator, percent-encoding each part.
fn target_with_query(path: &str, query: &[NameValue]) -> String {
    let mut target = path.to_owned();
    for nv in query {
        if !target.contains('?') {
            target.push('?');
        } else if !target.ends_with('?') && !target.ends_with('&') {
            target.push('&');
        }
        percent_encode_into(&mut target, &nv.name);
        target.push('=');
        percent_encode_into(&mut target, &nv.value);
    }
    target
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode_into(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

impl RestRequest {
    /// The envelope form of an HTTP request. `path` is the raw request target (path and query
    /// string) and `queryStrings` stays empty: the original gateway connector mishandles
    /// `queryStrings`, while every receiver handles a query inside `path`.
    ///
    /// # Errors
    /// [`Error::ContentEncoding`] for a compressed body, [`Error::Header`] for a header value
    /// that is not UTF-8.
    pub fn from_http<B: AsRef<[u8]>>(request: &Request<B>) -> Result<Self> {
        let (headers, content) = from_http_parts(request.headers(), request.body().as_ref())?;
        let path = request.uri().path_and_query().map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        Ok(RestRequest {
            method: request.method().as_str().to_owned(),
            path,
            query_strings: Vec::new(),
            headers,
            content,
        })
    }

    /// The HTTP request this envelope describes: `queryStrings` appended to `path` with the
    /// correct `?`/`&` and encoding, Content-Type from the content, Content-Length in bytes.
    ///
    /// # Errors
    /// [`Error::Method`], [`Error::Path`] or [`Error::Header`] for fields HTTP cannot carry.
    pub fn to_http(&self) -> Result<Request<Vec<u8>>> {
        let method =
            Method::from_bytes(self.method.as_bytes()).map_err(|_| Error::Method(self.method.clone()))?;
        let target = target_with_query(&self.path, &self.query_strings);
        let uri: http::Uri = target.parse().map_err(|_| Error::Path(target.clone()))?;
        if uri.scheme().is_some() || !target.starts_with('/') {
            return Err(Error::Path(target));
        }
        let mut request = Request::new(Vec::new());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.body_mut() = to_http_parts(&self.headers, &self.content, request.headers_mut())?;
        Ok(request)
    }
}

impl RestResponse {
    /// The envelope form of an HTTP response; `reasonPhrase` is the status's standard reason.
    ///
    /// # Errors
    /// [`Error::ContentEncoding`] for a compressed body, [`Error::Header`] for a header value
    /// that is not UTF-8.
    pub fn from_http<B: AsRef<[u8]>>(response: &Response<B>) -> Result<Self> {
        let (headers, content) = from_http_parts(response.headers(), response.body().as_ref())?;
        Ok(RestResponse {
            status_code: response.status().as_u16(),
            reason_phrase: response.status().canonical_reason().map(str::to_owned),
            headers,
            content,
        })
    }

    /// The HTTP response this envelope describes.
    ///
    /// # Errors
    /// [`Error::Status`] or [`Error::Header`] for fields HTTP cannot carry.
    pub fn to_http(&self) -> Result<Response<Vec<u8>>> {
        let status = StatusCode::from_u16(self.status_code).map_err(|_| Error::Status(self.status_code))?;
        let mut response = Response::new(Vec::new());
        *response.status_mut() = status;
        *response.body_mut() = to_http_parts(&self.headers, &self.content, response.headers_mut())?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Body;
    use serde_json::json;

    #[test]
    fn request_from_http_keeps_target_and_strips_transport_headers() {
        let request = Request::post("/micronets/v1/dhcp/subnets?x=1&y=%20")
            .header("Host", "localhost:5001")
            .header("Content-Type", "application/json")
            .header("Content-Length", "9")
            .header("Connection", "keep-alive")
            .header("Accept", "a")
            .header("Accept", "b")
            .body(br#"{"a": 1}"#.to_vec())
            .unwrap();
        let rest = RestRequest::from_http(&request).unwrap();
        assert_eq!(rest.method, "POST");
        assert_eq!(rest.path, "/micronets/v1/dhcp/subnets?x=1&y=%20");
        assert!(rest.query_strings.is_empty());
        assert_eq!(
            rest.headers,
            vec![
                NameValue::new("host", "localhost:5001"),
                NameValue::new("accept", "a"),
                NameValue::new("accept", "b"),
            ]
        );
        assert_eq!(rest.content.body(), Some(&Body::Json(json!({"a": 1}))));
    }

    #[test]
    fn compressed_bodies_are_refused() {
        let request = Request::post("/").header("Content-Encoding", "gzip").body(vec![1]).unwrap();
        assert!(matches!(RestRequest::from_http(&request), Err(Error::ContentEncoding(e)) if e == "gzip"));
    }

    #[test]
    fn query_strings_are_appended_correctly() {
        let q = vec![NameValue::new("a b", "1&2"), NameValue::new("c", "é")];
        assert_eq!(target_with_query("/p", &q), "/p?a%20b=1%262&c=%C3%A9");
        assert_eq!(target_with_query("/p?x=1", &q), "/p?x=1&a%20b=1%262&c=%C3%A9");
        assert_eq!(target_with_query("/p?", &q[1..]), "/p?c=%C3%A9");
        assert_eq!(target_with_query("/p", &[]), "/p");
    }

    #[test]
    fn request_to_http_derives_content_headers() {
        let rest = RestRequest {
            method: "PUT".into(),
            path: "/s/1".into(),
            query_strings: vec![NameValue::new("v", "2")],
            headers: vec![
                NameValue::new("Accept", "*/*"),
                NameValue::new("Content-Length", "999"),
                NameValue::new("Content-Type", "bogus/type"),
            ],
            content: Content::from_http(Some("text/plain"), "ünï".as_bytes()),
        };
        let http = rest.to_http().unwrap();
        assert_eq!(http.method(), Method::PUT);
        assert_eq!(http.uri(), "/s/1?v=2");
        assert_eq!(http.headers()["content-type"], "text/plain");
        assert_eq!(http.headers()["content-length"], "5");
        assert_eq!(http.headers()["accept"], "*/*");
        assert_eq!(http.body(), "ünï".as_bytes());
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut rest = RestRequest {
            method: "GET".into(),
            path: "http://elsewhere/".into(),
            query_strings: vec![],
            headers: vec![],
            content: Content::none(),
        };
        assert!(matches!(rest.to_http(), Err(Error::Path(_))));
        rest.path = "/ok".into();
        rest.method = "G E T".into();
        assert!(matches!(rest.to_http(), Err(Error::Method(_))));
        rest.method = "GET".into();
        rest.headers = vec![NameValue::new("bad name", "v")];
        assert!(matches!(rest.to_http(), Err(Error::Header(_))));
        rest.headers = vec![NameValue::new("x", "line\nbreak")];
        assert!(matches!(rest.to_http(), Err(Error::Header(_))));
    }

    #[test]
    fn responses_convert_both_ways() {
        let http = Response::builder()
            .status(201)
            .header("X-Custom", "yes")
            .header("Content-Type", "image/png")
            .body(vec![0x89, 0x50, 0xff])
            .unwrap();
        let rest = RestResponse::from_http(&http).unwrap();
        assert_eq!(rest.status_code, 201);
        assert_eq!(rest.reason_phrase.as_deref(), Some("Created"));
        assert_eq!(rest.headers, vec![NameValue::new("x-custom", "yes")]);
        let back = rest.to_http().unwrap();
        assert_eq!(back.status(), StatusCode::CREATED);
        assert_eq!(back.headers()["content-type"], "image/png");
        assert_eq!(back.headers()["content-length"], "3");
        assert_eq!(back.headers()["x-custom"], "yes");
        assert_eq!(back.body(), &vec![0x89, 0x50, 0xff]);
    }
}
