//! Small bridges between Rust values and JavaScript ones: protobuf messages travel as
//! their protobuf-JSON mapping (the same shape as the server API's JSON), errors as
//! `Error` objects with a numeric `code`.

use js_sys::{Function, JSON, Object, Promise, Reflect};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str, detail: &JsValue);
}

/// A message as a plain JavaScript object (protobuf-JSON mapping).
pub(crate) fn to_js<T: Serialize>(value: &T) -> JsValue {
    serde_json::to_string(value)
        .ok()
        .and_then(|s| JSON::parse(&s).ok())
        .unwrap_or(JsValue::UNDEFINED)
}

/// A message from a plain JavaScript object (protobuf-JSON mapping).
pub(crate) fn from_js<T: DeserializeOwned>(value: &JsValue) -> Result<T, JsValue> {
    let text: String = JSON::stringify(value)?.into();
    serde_json::from_str(&text).map_err(|e| error(400, &e.to_string()))
}

/// An `Error` with a `code` property.
pub(crate) fn error(code: u32, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    let _ = Reflect::set(&error, &"code".into(), &code.into());
    error.into()
}

/// A readable description of a thrown JavaScript value.
pub(crate) fn describe(value: JsValue) -> String {
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

/// Whether the global scope defines `name`.
pub(crate) fn global_has(name: &str) -> bool {
    Reflect::get(&js_sys::global(), &name.into()).is_ok_and(|v| !v.is_undefined())
}

/// A property of an options object, if present and not null.
pub(crate) fn field(object: &JsValue, name: &str) -> Option<JsValue> {
    Reflect::get(object, &name.into())
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
}

/// Builds `{key: value, ...}`.
pub(crate) fn object(entries: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (key, value) in entries {
        let _ = Reflect::set(&object, &(*key).into(), value);
    }
    object.into()
}

/// Calls an application callback; an exception is reported, not propagated.
pub(crate) fn call(callback: &Function, argument: &JsValue) {
    if let Err(e) = callback.call1(&JsValue::NULL, argument) {
        console_error("rtgate: an application callback threw", &e);
    }
}

/// Calls a provider (a function returning a string or a promise of one) and awaits it.
pub(crate) async fn provide(provider: &Function) -> Result<String, String> {
    let value = provider.call0(&JsValue::NULL).map_err(describe)?;
    let value = JsFuture::from(Promise::resolve(&value)).await.map_err(describe)?;
    value
        .as_string()
        .ok_or_else(|| "the token provider did not return a string".to_string())
}
