//! Every example envelope of the reference spec (`micronets-ws-proxy.md` section 2) and of the
//! original clients (`original-behaviour.md`), parsed and round-tripped.
//!
//! Some examples in the spec are templates or have typos (curly quotes, Python's `False`, a
//! missing comma). Each of those is checked to fail with a JSON error, and a corrected copy
//! round-trips.

use micronets_message::{Body, Envelope, Error, Kind, MessageId, NameValue};
use serde_json::{Value, json};

/// Parses `text`, serializes it back and checks that nothing changed.
#[track_caller]
fn round_trip(text: &str) -> Envelope {
    let envelope = Envelope::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let original: Value = serde_json::from_str(text).unwrap();
    assert_eq!(envelope.to_value(), original, "serialized form differs");
    assert_eq!(Envelope::parse(&envelope.to_json()).unwrap(), envelope);
    envelope
}

#[track_caller]
fn assert_json_error(text: &str) {
    match Envelope::parse(text) {
        Err(Error::Json(e)) => assert!(!e.to_string().is_empty()),
        other => panic!("expected a JSON error, got {other:?}"),
    }
}

const HELLO_EXAMPLE: &str = r#"
{
    "message": {
        "messageId": 0,
        "messageType": "CONN:HELLO",
        "requiresResponse": false,
        "peerClass": "micronets-ws-test-client",
        "peerId": "12345678"
    }
}"#;

#[test]
fn hello_example() {
    let envelope = round_trip(HELLO_EXAMPLE);
    assert_eq!(envelope.message_id, Some(MessageId::Int(0)));
    let Kind::Hello(hello) = envelope.kind else { panic!("not a hello") };
    assert_eq!(hello.peer_class.as_deref(), Some("micronets-ws-test-client"));
    assert_eq!(hello.peer_id.as_deref(), Some("12345678"));
}

#[test]
fn hello_definition_is_a_template() {
    assert_json_error(
        r#"{
    "message": {
        "messageId": 0,
        "messageType": "CONN:HELLO",
        "peerClass": <string identifying the type of peer connecting to the websocket>,
        "peerId": <string uniquely identifying the peer in the peer class>,
        "requiresResponse": false
    }
}"#,
    );
}

#[test]
fn base_definition_is_a_template() {
    assert_json_error(
        "{\n   \u{201c}message\u{201d}: {\n      \u{201c}messageId\u{201d}: <client-supplied session-unique string>,\n   }\n}",
    );
    let corrected = round_trip(
        r#"{"message": {"messageId": "session-1", "messageType": "EVENT:x", "requiresResponse": false, "inResponseTo": "session-0"}}"#,
    );
    assert_eq!(corrected.in_response_to, Some(MessageId::from("session-0")));
}

#[test]
fn original_clients_hellos() {
    let test_client = r#"{"message": {"messageId": 0, "messageType": "CONN:HELLO", "requiresResponse": false, "peerClass": "micronets-ws-test-client", "peerId": "12345678"}}"#;
    round_trip(test_client);
    let gateway = r#"{"message": {"messageType": "CONN:HELLO", "requiresResponse": false, "peerClass": "micronets-gateway-service", "peerId": "gw service 140230", "messageId": 0}}"#;
    round_trip(gateway);
}

#[test]
fn get_request_example() {
    let envelope = round_trip(
        r#"{
  "message": {
    "messageId": 3,
    "messageType": "REST:REQUEST",
    "requiresResponse": true,
    "method": "GET",
    "path": "/micronets/v1/dhcp/subnets",
    "headers": [
      {"name": "Host", "value": "localhost:5001"},
      {"name": "User-Agent", "value": "curl/7.54.0"},
      {"name": "Accept", "value": "*/*"}
    ]
  }
}"#,
    );
    assert!(envelope.requires_response);
    let Kind::RestRequest(request) = envelope.kind else { panic!("not a request") };
    assert_eq!(request.method, "GET");
    assert_eq!(request.headers[1], NameValue::new("User-Agent", "curl/7.54.0"));
    assert_eq!(request.content.body(), None);
    let http = request.to_http().unwrap();
    assert_eq!(http.uri(), "/micronets/v1/dhcp/subnets");
    assert_eq!(http.headers()["host"], "localhost:5001");
}

#[test]
fn post_request_example() {
    let envelope = round_trip(
        r#"{
  "message": {
    "messageId": 1,
    "messageType": "REST:REQUEST",
    "requiresResponse": true,
    "method": "POST",
    "path": "/micronets/v1/dhcp/subnets",
    "headers": [
      {"name": "Host", "value": "localhost:5001"},
      {"name": "User-Agent", "value": "curl/7.54.0"},
      {"name": "Accept", "value": "*/*"}
    ],
    "dataFormat": "application/json",
    "messageBody": {
      "subnetId": "mocksubnet007",
      "ipv4Network": {"network": "192.168.1.0", "mask": "255.255.255.0", "gateway": "192.168.1.1"},
      "nameservers": ["1.2.3.4", "1.2.3.5"]
    }
  }
}"#,
    );
    let Kind::RestRequest(request) = envelope.kind else { panic!("not a request") };
    assert_eq!(request.content.data_format(), Some("application/json"));
    let Some(Body::Json(body)) = request.content.body() else { panic!("not JSON") };
    assert_eq!(body["subnetId"], "mocksubnet007");
    let http = request.to_http().unwrap();
    assert_eq!(http.headers()["content-type"], "application/json");
    let sent: Value = serde_json::from_slice(http.body()).unwrap();
    assert_eq!(&sent, body);
    assert_eq!(http.headers()["content-length"], http.body().len().to_string().as_str());
}

#[test]
fn put_request_example() {
    round_trip(
        r#"{
    "message": {
        "messageId": 3,
        "messageType": "REST:REQUEST",
        "requiresResponse": true,
        "method": "PUT",
        "path": "/micronets/v1/dhcp/subnets/mocksubnet007",
        "dataFormat": "application/json",
        "headers": [
           {"name": "Host", "value": "localhost:5001"},
           {"name": "User-Agent", "value": "curl/7.54.0"},
           {"name": "Accept", "value": "*/*"}
        ],
        "messageBody": {
            "ipv4Network": {
                "gateway": "192.168.1.3"
            }
        }
    }
}"#,
    );
}

#[test]
fn request_definition_is_a_template() {
    assert_json_error(
        "\u{201c}message\u{201d}: {\n   \u{201c}messageType\u{201d}: \u{201c}REST:REQUEST\u{201d},\n   \u{201c}requiresResponse\u{201d}: true,",
    );
    let corrected = round_trip(
        r#"{"message": {"messageId": 9, "messageType": "REST:REQUEST", "requiresResponse": true, "method": "GET", "path": "/micronets/v1/dhcp/subnets",
            "queryStrings": [{"name": "subnet", "value": "a b"}], "headers": [{"name": "Accept", "value": "*/*"}],
            "dataFormat": "text/plain", "messageBody": "hello"}}"#,
    );
    let Kind::RestRequest(request) = corrected.kind else { panic!("not a request") };
    assert_eq!(request.to_http().unwrap().uri(), "/micronets/v1/dhcp/subnets?subnet=a%20b");
}

#[test]
fn get_response_example() {
    let text = r#"{
    "message": {
        "messageId": 2,
        "inResponseTo": 3,
        "messageType": "REST:RESPONSE",
        "reasonPhrase": null,
        "requiresResponse": false,
        "statusCode": 200,
        "dataFormat": "application/json",
        "messageBody": {
            "subnets": [
                {"ipv4Network": {"gateway": "192.168.30.2", "mask": "255.255.255.0", "network": "192.168.30.0"}, "subnetId": "wireless-network-1"},
                {"ipv4Network": {"gateway": "192.168.40.1", "mask": "255.255.255.0", "network": "192.168.40.0"}, "subnetId": "wired-network-3"},
                {"ipv4Network": {"gateway": "10.40.0.1", "mask": "255.255.255.0", "network": "10.40.0.0"}, "nameservers": ["10.40.0.1"], "subnetId": "testsubnet001"}
            ]
        }
    }
}"#;
    // A null reasonPhrase (what the original gateway sends) means "none", which is written by
    // leaving the field out: the only normalization a round trip makes.
    let envelope = Envelope::parse(text).unwrap();
    let mut expected: Value = serde_json::from_str(text).unwrap();
    expected["message"].as_object_mut().unwrap().remove("reasonPhrase");
    assert_eq!(envelope.to_value(), expected);
    assert_eq!(envelope.in_response_to, Some(MessageId::Int(3)));
    let Kind::RestResponse(response) = envelope.kind else { panic!("not a response") };
    assert_eq!(response.status_code, 200);
    assert_eq!(response.reason_phrase, None);
}

#[test]
fn post_response_example_has_a_typo() {
    // The spec's example lacks the comma after `"statusCode": 201`.
    assert_json_error(
        r#"{
    "message": {
        "messageId": 2,
        "inResponseTo": 1,
        "messageType": "REST:RESPONSE",
        "requiresResponse": false,
        "statusCode": 201
        "dataFormat": "application/json",
        "messageBody": {"subnet": {"subnetId": "mocksubnet007"}}
    }
}"#,
    );
    let corrected = round_trip(
        r#"{
    "message": {
        "messageId": 2,
        "inResponseTo": 1,
        "messageType": "REST:RESPONSE",
        "requiresResponse": false,
        "statusCode": 201,
        "dataFormat": "application/json",
        "messageBody": {
            "subnet": {
                "subnetId": "mocksubnet007",
                "ipv4Network": {"gateway": "192.168.1.1", "mask": "255.255.255.0", "network": "192.168.1.0"},
                "nameservers": ["1.2.3.4", "1.2.3.5"]
            }
        }
    }
}"#,
    );
    let Kind::RestResponse(response) = corrected.kind else { panic!("not a response") };
    assert_eq!(response.status_code, 201);
    assert_eq!(response.to_http().unwrap().status(), 201);
}

#[test]
fn put_and_delete_response_examples() {
    round_trip(
        r#" {
     "message": {
         "messageId": 2,
         "inResponseTo": 3,
         "messageType": "REST:RESPONSE",
         "requiresResponse": false,
         "statusCode": 200,
         "dataFormat": "application/json",
         "messageBody": {
             "subnet": {
                 "ipv4Network": {"gateway": "192.168.1.3", "mask": "255.255.255.0", "network": "192.168.1.0"},
                 "nameservers": ["1.2.3.4", "1.2.3.5"],
                 "subnetId": "mocksubnet007"
             }
         }
     }
 }"#,
    );
    let delete = round_trip(
        r#"{
    "message": {
        "messageId": 3,
        "inResponseTo": 5,
        "messageType": "REST:RESPONSE",
        "requiresResponse": false,
        "statusCode": 200
    }
}"#,
    );
    let Kind::RestResponse(response) = delete.kind else { panic!("not a response") };
    assert!(response.to_http().unwrap().body().is_empty());
}

#[test]
fn response_definition_is_a_template() {
    assert_json_error(
        "{\n    \u{201c}message\u{201d}: {\n        \u{201c}messageType\u{201d}: \u{201c}REST:RESPONSE\u{201d},\n        \"inResponseTo\": <integer message ID of the REST:REQUEST that generated the response>\n    }\n}",
    );
}

#[test]
fn event_definition_uses_python_false() {
    assert_json_error(
        "{\n    \u{201c}message\u{201d}: {\n        \u{201c}messageType\u{201d}: \u{201c}EVENT:<client-supplied event name>\u{201d},\n        \u{201c}requiresResponse\u{201d}: False\n    }\n}",
    );
    assert_json_error(r#"{"message": {"messageType": "EVENT:x", "requiresResponse": False}}"#);
    let corrected = round_trip(
        r#"{"message": {"messageId": 4, "messageType": "EVENT:GatewayService:leaseAcquired", "requiresResponse": false,
            "dataFormat": "application/json",
            "messageBody": {"leaseAcquiredEvent": {"micronetId": "m1", "deviceId": "d1", "macAddress": {"eui48": "b8:27:eb:00:00:01"}, "networkAddress": {"ipv4": "192.168.1.42"}}}}}"#,
    );
    let Kind::Event(event) = corrected.kind else { panic!("not an event") };
    assert_eq!(event.name, "GatewayService:leaseAcquired");
    assert_eq!(corrected.message_id, Some(MessageId::Int(4)));
}

#[test]
fn unknown_types_and_fields_are_kept() {
    let envelope = round_trip(
        r#"{"message": {"messageId": "d-1", "messageType": "DPP:ONBOARD", "requiresResponse": false, "zeta": [1, {"b": null}], "alpha": "x"}}"#,
    );
    assert_eq!(envelope.kind, Kind::Other("DPP:ONBOARD".into()));
    assert_eq!(envelope.extra.keys().collect::<Vec<_>>(), ["zeta", "alpha"]);
    let with_extra = round_trip(
        r#"{"message": {"messageId": 1, "messageType": "CONN:HELLO", "requiresResponse": false, "peerId": "p", "capabilities": ["x"]}}"#,
    );
    assert_eq!(with_extra.extra["capabilities"], json!(["x"]));
}

#[test]
fn proxy_originated_messages_have_int_ids_and_booleans() {
    use micronets_message::{ConnError, PeerLeft};
    let error =
        Envelope::new(Kind::Error(ConnError { status_code: 503, reason_phrase: Some("no peer".into()) }))
            .with_id(7)
            .in_response_to(Some(MessageId::from("req-1")));
    assert_eq!(
        error.to_value(),
        json!({"message": {"messageId": 7, "messageType": "CONN:ERROR", "requiresResponse": false,
            "inResponseTo": "req-1", "statusCode": 503, "reasonPhrase": "no peer"}})
    );
    let left = Envelope::new(Kind::PeerLeft(PeerLeft {
        peer_class: Some("gw".into()),
        peer_id: Some("g1".into()),
        reason: Some("replaced".into()),
    }))
    .with_id(8);
    assert_eq!(round_trip(&left.to_json()), left);
    assert!(left.to_json().starts_with(r#"{"message":{"messageId":8,"messageType":"CONN:PEER-LEFT""#));
}

#[test]
fn field_errors_name_the_field() {
    let cases = [
        (r#"{"message": {"messageType": "REST:REQUEST", "path": "/"}}"#, "method is required"),
        (r#"{"message": {"messageType": "REST:RESPONSE"}}"#, "statusCode is required"),
        (
            r#"{"message": {"messageType": "REST:RESPONSE", "statusCode": 42}}"#,
            "statusCode must be an integer from 100 to 999",
        ),
        (
            r#"{"message": {"messageType": "REST:REQUEST", "method": "GET", "path": "/", "headers": [{"name": 1}]}}"#,
            "headers entries",
        ),
        (
            r#"{"message": {"messageType": "REST:REQUEST", "method": "GET", "path": "/", "queryStrings": {}}}"#,
            "queryStrings must be a list",
        ),
        (r#"{"message": {"messageType": "CONN:HELLO", "peerId": 5}}"#, "peerId must be a string"),
        (
            r#"{"message": {"messageType": "CONN:HELLO", "messageId": true}}"#,
            "messageId must be a string or an integer",
        ),
        (r#"{"message": {"messageType": 1}}"#, "messageType must be a string"),
        (r#"{"message": {"messageId": 1}}"#, "messageType is required"),
        (r#"{"message": []}"#, "\"message\" object"),
        (r#"[1]"#, "\"message\" object"),
    ];
    for (text, expected) in cases {
        let err = Envelope::parse(text).unwrap_err();
        assert!(matches!(err, Error::Envelope(_)), "{text}: {err:?}");
        assert!(err.to_string().contains(expected), "{text}: {err}");
    }
}
