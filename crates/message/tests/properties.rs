//! Property tests: envelopes round-trip, the header parse agrees with the full parse, and no
//! input makes either panic.

use micronets_message::{
    ConnError, Content, Envelope, Event, Header, Hello, Kind, MessageId, NameValue, PeerLeft, RestRequest,
    RestResponse,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e15f64..1e15).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_id() -> impl Strategy<Value = MessageId<'static>> {
    prop_oneof![any::<i64>().prop_map(MessageId::from), ".{0,16}".prop_map(MessageId::from)]
}

fn arb_text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn arb_pairs() -> impl Strategy<Value = Vec<NameValue>> {
    prop::collection::vec((arb_text(), arb_text()).prop_map(|(n, v)| NameValue::new(n, v)), 0..4)
}

fn arb_content() -> impl Strategy<Value = Content> {
    let media = prop::option::of(prop_oneof![
        Just("application/json".to_owned()),
        Just("application/vnd.api+json".to_owned()),
        Just("text/plain; charset=utf-8".to_owned()),
        Just("image/png".to_owned()),
        Just("application/octet-stream".to_owned()),
        "[a-z]{1,8}/[a-z]{1,8}",
    ]);
    prop_oneof![
        Just(Content::none()),
        arb_json().prop_map(Content::json),
        (media.clone(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(m, bytes)| Content::from_http(m.as_deref(), &bytes)),
        (media, arb_json()).prop_map(|(m, v)| Content::from_http(m.as_deref(), v.to_string().as_bytes())),
    ]
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    let opt = || prop::option::of(arb_text());
    prop_oneof![
        (opt(), opt()).prop_map(|(peer_class, peer_id)| Kind::Hello(Hello { peer_class, peer_id })),
        (100u16..1000, opt())
            .prop_map(|(status_code, reason_phrase)| Kind::Error(ConnError { status_code, reason_phrase })),
        (opt(), opt(), opt()).prop_map(|(peer_class, peer_id, reason)| Kind::PeerLeft(PeerLeft {
            peer_class,
            peer_id,
            reason
        })),
        ("[A-Z]{1,7}", "/.{0,20}", arb_pairs(), arb_pairs(), arb_content()).prop_map(
            |(method, path, query_strings, headers, content)| {
                Kind::RestRequest(RestRequest { method, path, query_strings, headers, content })
            }
        ),
        (100u16..1000, prop::option::of(arb_text()), arb_pairs(), arb_content()).prop_map(
            |(status_code, reason_phrase, headers, content)| {
                Kind::RestResponse(RestResponse { status_code, reason_phrase, headers, content })
            }
        ),
        (".{0,16}", arb_content()).prop_map(|(name, content)| Kind::Event(Event { name, content })),
        "X-[A-Z:]{0,10}".prop_map(Kind::Other),
    ]
}

prop_compose! {
    fn arb_envelope()(
        message_id in prop::option::of(arb_id()),
        requires_response in any::<bool>(),
        in_response_to in prop::option::of(arb_id()),
        kind in arb_kind(),
        extra in prop::collection::vec(("x[A-Za-z]{0,8}", arb_json()), 0..3),
    ) -> Envelope {
        Envelope {
            message_id,
            requires_response,
            in_response_to,
            kind,
            extra: extra.into_iter().collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn envelopes_round_trip(envelope in arb_envelope()) {
        let text = envelope.to_json();
        let parsed = Envelope::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(&parsed, &envelope);
        let pretty = serde_json::to_string_pretty(&envelope).unwrap();
        prop_assert_eq!(Envelope::parse(&pretty).unwrap(), envelope);
    }

    #[test]
    fn header_agrees_with_full_parse(envelope in arb_envelope()) {
        let text = envelope.to_json();
        let header = Header::parse(&text).unwrap();
        let message_type = envelope.message_type();
        prop_assert_eq!(header.message_type.as_ref(), message_type.as_str());
        prop_assert_eq!(header.message_id.map(MessageId::into_owned), envelope.message_id.clone());
        prop_assert_eq!(header.requires_response, envelope.requires_response);
        prop_assert_eq!(header.in_response_to.map(MessageId::into_owned), envelope.in_response_to.clone());
        prop_assert_eq!(Header::parse_bytes(text.as_bytes()).is_ok(), true);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let header_ok = Header::parse(&text).is_ok();
        if Envelope::parse(&text).is_ok() {
            prop_assert!(header_ok, "the header parse must accept every valid envelope");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Header::parse_bytes(&bytes);
        let _ = Envelope::from_slice(&bytes);
    }

    #[test]
    fn arbitrary_messages_never_panic(message in arb_json(), message_type in prop::option::of(arb_json())) {
        let mut message = message;
        if let (Value::Object(fields), Some(t)) = (&mut message, message_type) {
            fields.insert("messageType".into(), t);
        }
        let text = serde_json::json!({ "message": message }).to_string();
        let header_ok = Header::parse(&text).is_ok();
        if Envelope::parse(&text).is_ok() {
            prop_assert!(header_ok);
        }
    }

    #[test]
    fn http_requests_survive_the_tunnel(
        method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE"), Just("HEAD")],
        path in "/[a-z0-9/]{0,16}(\\?[a-z]=[0-9]{1,3})?",
        media in prop::option::of(prop_oneof![Just("application/json"), Just("text/plain"), Just("image/png")]),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut builder = http::Request::builder().method(method).uri(path.as_str()).header("x-trace", "1");
        if let Some(media) = media {
            builder = builder.header("content-type", media);
        }
        let request = builder.body(body.clone()).unwrap();
        let rest = RestRequest::from_http(&request).unwrap();
        let wire = Envelope::new(Kind::RestRequest(rest)).with_id(1).to_json();
        let Kind::RestRequest(back) = Envelope::parse(&wire).unwrap().kind else { unreachable!() };
        let replayed = back.to_http().unwrap();
        prop_assert_eq!(replayed.method(), request.method());
        prop_assert_eq!(replayed.uri(), request.uri());
        prop_assert_eq!(replayed.headers().get("x-trace"), request.headers().get("x-trace"));
        prop_assert_eq!(replayed.body(), &body);
        if !body.is_empty() {
            prop_assert_eq!(replayed.headers()["content-length"].to_str().unwrap(), body.len().to_string());
            let expected = media.unwrap_or("application/octet-stream");
            prop_assert_eq!(replayed.headers()["content-type"].to_str().unwrap(), expected);
        }
    }
}
