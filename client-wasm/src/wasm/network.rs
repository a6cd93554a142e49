//! The browser's online/offline signal, for the connector: no attempts while offline, an
//! attempt at once when the network is back.

use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{Event, Window};

/// Listens to the window's `online` and `offline` events until dropped.
pub(crate) struct NetworkWatch {
    window: Window,
    on_online: Closure<dyn FnMut(Event)>,
    on_offline: Closure<dyn FnMut(Event)>,
}

impl NetworkWatch {
    /// Starts listening (outside a window, e.g. in a worker, there is nothing to listen to).
    /// `report(true)` means online.
    pub(crate) fn start(report: Rc<dyn Fn(bool)>) -> Option<NetworkWatch> {
        let window = web_sys::window()?;
        let on_online = {
            let report = report.clone();
            Closure::<dyn FnMut(Event)>::new(move |_| report(true))
        };
        let on_offline = Closure::<dyn FnMut(Event)>::new(move |_| report(false));
        window
            .add_event_listener_with_callback("online", on_online.as_ref().unchecked_ref())
            .ok()?;
        window
            .add_event_listener_with_callback("offline", on_offline.as_ref().unchecked_ref())
            .ok()?;
        Some(NetworkWatch {
            window,
            on_online,
            on_offline,
        })
    }

    /// Whether the browser believes it is online now.
    pub(crate) fn is_online(&self) -> bool {
        self.window.navigator().on_line()
    }
}

impl Drop for NetworkWatch {
    fn drop(&mut self) {
        let _ = self
            .window
            .remove_event_listener_with_callback("online", self.on_online.as_ref().unchecked_ref());
        let _ = self
            .window
            .remove_event_listener_with_callback("offline", self.on_offline.as_ref().unchecked_ref());
    }
}
