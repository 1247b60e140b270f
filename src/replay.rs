//! Policies that re-create request bodies, so a request can be sent again after the API
//! rejects its token.

/// Re-creates a request body so the request can be replayed once with a new token after the
/// API rejected the first attempt's token.
///
/// `http::Request` is not `Clone`, and a streaming body cannot be read twice, so the layer
/// requests a copy of the body from the policy before it sends a request. A request whose body
/// cannot be copied (the policy returns `None`) is not replayed: its caller gets the
/// rejection, and the next request carries the new token.
///
/// [`CloneBody`], the default, copies any body that is `Clone`, such as
/// `http_body_util::Full<Bytes>`, `Empty<Bytes>` or `String`. [`NoReplay`] turns replay off
/// and accepts any body type. Implement the trait for a body type of your own:
///
/// ```
/// use bigvision_auth::ReplayBody;
/// use bytes::Bytes;
///
/// /// Replays requests whose body is fully buffered; streams are not replayed.
/// #[derive(Clone)]
/// struct BufferedOnly;
///
/// enum MyBody {
///     Buffered(Bytes),
///     Stream(Box<dyn Send>),
/// }
///
/// impl ReplayBody<MyBody> for BufferedOnly {
///     fn clone_body(&self, body: &MyBody) -> Option<MyBody> {
///         match body {
///             MyBody::Buffered(bytes) => Some(MyBody::Buffered(bytes.clone())),
///             MyBody::Stream(_) => None,
///         }
///     }
/// }
/// ```
pub trait ReplayBody<B>: Clone {
    /// Returns a copy of `body` for a second attempt, or `None` when it cannot be re-created.
    fn clone_body(&self, body: &B) -> Option<B>;
}

/// Replays requests whose body type is `Clone`; the default.
///
/// The layer keeps a copy of the request head and body while the first attempt is in
/// flight. For a `Full<Bytes>` body that copy shares the bytes; the request's header map is
/// cloned, which allocates.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneBody;

impl<B: Clone> ReplayBody<B> for CloneBody {
    fn clone_body(&self, body: &B) -> Option<B> {
        Some(body.clone())
    }
}

/// Never replays; a rejected request's caller gets the rejection. Accepts any body type and
/// keeps no copy of the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReplay;

impl<B> ReplayBody<B> for NoReplay {
    fn clone_body(&self, _body: &B) -> Option<B> {
        None
    }
}
