//! Sending token requests through the user's login/refresh service.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tower::{BoxError, Service, ServiceExt};

/// The maximum size of a token endpoint's reply body; a longer reply is rejected unread.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The status, headers and body of a reply, before the exchange reads it.
pub(crate) type RawReply = (http::response::Parts, Bytes);

/// The reason a reply could not be read.
#[derive(Debug)]
pub(crate) enum TransportError {
    /// The service or the body stream failed.
    Failed(BoxError),
    /// The body was longer than [`MAX_REPLY_BYTES`].
    TooLarge,
}

type SendFuture = Pin<Box<dyn Future<Output = Result<RawReply, TransportError>> + Send>>;

/// A type-erased login/refresh service: any `tower::Service` that returns an HTTP response.
#[derive(Clone)]
pub(crate) struct Transport {
    send: Arc<dyn Fn(Request<Full<Bytes>>) -> SendFuture + Send + Sync>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}

impl Transport {
    /// Wraps a service. It is cloned for every call, driven to readiness, then called.
    ///
    /// The service sits behind a mutex so that it need not be `Sync`; the lock is held only
    /// to clone it.
    pub(crate) fn new<L, ResBody>(service: L) -> Self
    where
        L: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
        L::Future: Send,
        L::Error: Into<BoxError>,
        ResBody: Body + Send + 'static,
        ResBody::Data: Send,
        ResBody::Error: Into<BoxError>,
    {
        let service = Mutex::new(service);
        let send = move |request: Request<Full<Bytes>>| -> SendFuture {
            let service = match service.lock() {
                Ok(guard) => guard.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            Box::pin(send_and_read(service, request))
        };
        Transport {
            send: Arc::new(send),
        }
    }

    pub(crate) fn send(&self, request: Request<Full<Bytes>>) -> SendFuture {
        (self.send)(request)
    }
}

async fn send_and_read<L, ResBody>(
    service: L,
    request: Request<Full<Bytes>>,
) -> Result<RawReply, TransportError>
where
    L: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    L::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    let response = service
        .oneshot(request)
        .await
        .map_err(|error| TransportError::Failed(error.into()))?;
    let (parts, body) = response.into_parts();

    let too_long = body
        .size_hint()
        .exact()
        .is_some_and(|length| length > MAX_REPLY_BYTES as u64);
    if too_long {
        return Err(TransportError::TooLarge);
    }
    match Limited::new(body, MAX_REPLY_BYTES).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(error) if error.is::<LengthLimitError>() => Err(TransportError::TooLarge),
        Err(error) => Err(TransportError::Failed(error)),
    }
}
