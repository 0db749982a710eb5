//! Dependencies between tasks, as the user declares them: the edges a task
//! is submitted with ([`After`], each with its [`OnParentFailure`] policy),
//! the typed slots through which the dependent's body reads its parents'
//! outcomes ([`TaskContext::parent`](crate::TaskContext::parent)), and
//! [`Graph`], which submits many tasks, edges included, all or nothing.
//!
//! The engine's side (waiting children, the cascade of outcomes) is
//! `crate::engine::deps`. A dependent waits in no queue and holds no worker:
//! the engine queues it when its last parent finishes.

use std::any::{type_name, Any, TypeId};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::cell::copy_for_subscriber;
use crate::cluster::Cluster;
use crate::engine::NewTask;
use crate::error::{DependencyCause, DependencyError, SubmitError, TaskError};
use crate::handle::TaskHandle;
use crate::job::{Answer, Job, Outcome, SubscribeRequest};
use crate::panic::drop_guarded;
use crate::task::TaskId;

/// What a dependent task does when a parent ends without a value (failed,
/// panicked, timed out, cancelled, shut down, or itself failed through a
/// dependency or was skipped).
///
/// # Default
/// [`OnParentFailure::Propagate`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnParentFailure {
    /// The dependent resolves at once, without running, as
    /// [`TaskError::Dependency`] naming the parent and how it ended; its
    /// own dependents then do the same, each exactly once.
    #[default]
    Propagate,
    /// The dependent runs anyway once every parent has finished, and reads
    /// the parent's error through [`TaskContext::parent`](crate::TaskContext::parent).
    Run,
    /// The dependent resolves at once, without running, as
    /// [`TaskError::Skipped`]: a distinct outcome, for work that is simply
    /// not needed when the parent did not deliver.
    Skip,
}

#[derive(Clone)]
pub(crate) enum Target {
    Id(TaskId),
    /// An earlier node of the graph `graph`.
    Node {
        graph: u64,
        index: usize,
    },
}

/// One dependency edge: the parent, whether the dependent can read its
/// outcome (a typed edge), and the [`OnParentFailure`] policy. Given to
/// [`TaskBuilder::after`](crate::TaskBuilder::after).
///
/// ```
/// use corral::{After, Cluster, OnParentFailure, TaskError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let price = cluster.task(|_| async { Ok::<u32, String>(42) }).id("price").submit().unwrap();
/// let audit = cluster.task(|_| async { Err::<(), _>("offline".to_string()) }).id("audit").submit().unwrap();
/// let report = cluster
///     .task(|ctx| async move {
///         let price = ctx.parent::<u32, String>("price").await.map_err(|e| e.to_string())?;
///         // Runs even though `audit` failed, and sees its error.
///         let audit = ctx.parent::<(), String>("audit").await;
///         Ok::<_, String>(format!("price {price}, audit ok: {}", audit.is_ok()))
///     })
///     .after(&price) // typed by the handle, default policy
///     .after(After::id::<(), String>("audit").on_failure(OnParentFailure::Run))
///     .submit()
///     .unwrap();
/// assert_eq!(report.await, Ok("price 42, audit ok: false".to_string()));
/// # let _ = (price.await, audit.await);
/// # }
/// ```
pub struct After {
    pub(crate) target: Target,
    pub(crate) policy: OnParentFailure,
    /// `Some` for a typed edge: where the parent's outcome arrives.
    pub(crate) typed: Option<Arc<dyn ParentValue>>,
    /// The parent's id once known (a graph node's generated id is only
    /// known when the graph is admitted).
    resolved: OnceLock<TaskId>,
}

impl After {
    fn new(target: Target, typed: Option<Arc<dyn ParentValue>>) -> Self {
        let resolved = OnceLock::new();
        if let Target::Id(id) = &target {
            let _ = resolved.set(id.clone());
        }
        After {
            target,
            policy: OnParentFailure::Propagate,
            typed,
            resolved,
        }
    }

    /// A typed edge to the task `id`, whose outcome is `Result<T, TaskError<E>>`:
    /// the dependent's body reads it with [`TaskContext::parent`](crate::TaskContext::parent).
    /// `Clone` is needed because the parent's handle keeps its own copy. The
    /// parent must be pending, running or cached at submit, and its types
    /// must match ([`SubmitError::ParentTypeMismatch`]).
    pub fn id<T, E>(id: impl Into<TaskId>) -> Self
    where
        T: Clone + Send + 'static,
        E: Clone + Send + 'static,
    {
        After::new(Target::Id(id.into()), Some(TypedParent::<T, E>::new_slot()))
    }

    /// An ordering-only edge to the task `id`: the dependent starts after
    /// it, and the policy applies if it fails, but its value is not read
    /// (any types; no `Clone` needed).
    pub fn any(id: impl Into<TaskId>) -> Self {
        After::new(Target::Id(id.into()), None)
    }

    /// What to do if this parent ends without a value (default: [`OnParentFailure::Propagate`]).
    pub fn on_failure(mut self, policy: OnParentFailure) -> Self {
        self.policy = policy;
        self
    }

    /// The parent's id, once known.
    pub(crate) fn id_now(&self) -> Option<&TaskId> {
        self.resolved.get()
    }

    pub(crate) fn resolve(&self, id: TaskId) {
        let _ = self.resolved.set(id);
    }
}

impl fmt::Debug for After {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("After");
        match &self.target {
            Target::Id(id) => d.field("id", id),
            Target::Node { index, .. } => d.field("node", index),
        };
        d.field("typed", &self.typed.is_some())
            .field("policy", &self.policy)
            .finish()
    }
}

/// A typed edge to the task of `handle` (see [`After::id`]).
impl<T, E> From<&TaskHandle<T, E>> for After
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    fn from(handle: &TaskHandle<T, E>) -> Self {
        After::id::<T, E>(handle.id())
    }
}

/// A typed edge to an earlier node of the same [`Graph`].
impl<T, E> From<&Node<T, E>> for After
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    fn from(node: &Node<T, E>) -> Self {
        let after = After::new(
            Target::Node {
                graph: node.graph,
                index: node.index,
            },
            Some(TypedParent::<T, E>::new_slot()),
        );
        if let Some(id) = &node.id {
            after.resolve(id.clone());
        }
        after
    }
}

/// How a typed slot subscribed to its parent, under the engine's lock.
pub(crate) enum Subscribed {
    /// The receiver is in place.
    Installed,
    /// The parent's cached outcome was lent: copy it after unlocking (user
    /// `Clone`), which this closure does; the child waits for it.
    Later(Box<dyn FnOnce() + Send>),
    /// The parent let go of its outcome meanwhile: nothing to read.
    Gone,
}

/// A typed edge's slot, type-erased for the engine.
pub(crate) trait ParentValue: Send + Sync + 'static {
    /// The `TypeId` and name of the `Outcome<T, E>` it expects.
    fn expected(&self) -> (TypeId, &'static str);
    /// Subscribes to `parent` (types already checked). Under the engine's
    /// lock: runs no user code.
    fn subscribe(self: Arc<Self>, parent: Arc<dyn Job>) -> Subscribed;
    fn as_any(&self) -> &dyn Any;
}

pub(crate) struct TypedParent<T, E> {
    rx: Mutex<Option<oneshot::Receiver<Outcome<T, E>>>>,
    /// The outcome once received, kept for later reads and attempts. An
    /// async lock: two reads in one attempt wait for the one receive.
    value: tokio::sync::Mutex<Option<Outcome<T, E>>>,
}

impl<T, E> TypedParent<T, E>
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    fn new_slot() -> Arc<dyn ParentValue> {
        Arc::new(TypedParent::<T, E> {
            rx: Mutex::new(None),
            value: tokio::sync::Mutex::new(None),
        })
    }

    /// A copy of the parent's outcome: waits for its delivery, which follows
    /// the parent's end at once (the dependent may be claimed first).
    pub(crate) async fn read(&self, id: &TaskId) -> Outcome<T, E> {
        let mut value = self.value.lock().await;
        if value.is_none() {
            let rx = self.rx.lock().take();
            let got = match rx {
                Some(rx) => rx.await.unwrap_or_else(|_| Err(TaskError::Shutdown)),
                None => Err(DependencyError::new(id.clone(), DependencyCause::Unknown).into()),
            };
            *value = Some(got);
        }
        let Some(outcome) = value.as_ref() else {
            unreachable!("set above")
        };
        copy_for_subscriber(<Outcome<T, E> as Clone>::clone, outcome)
    }
}

impl<T, E> ParentValue for TypedParent<T, E>
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    fn expected(&self) -> (TypeId, &'static str) {
        (TypeId::of::<Outcome<T, E>>(), type_name::<Result<T, E>>())
    }

    fn subscribe(self: Arc<Self>, parent: Arc<dyn Job>) -> Subscribed {
        let cloner = <Outcome<T, E> as Clone>::clone;
        let mut req = SubscribeRequest::<T, E> {
            cloner,
            answer: None,
            hook: None,
        };
        if parent.subscribe(&mut req).is_err() {
            return Subscribed::Gone;
        }
        match req.answer {
            Some(Answer::Pending(rx)) => {
                *self.rx.lock() = Some(rx);
                Subscribed::Installed
            }
            Some(Answer::Lent(cached, cell)) => Subscribed::Later(Box::new(move || {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(copy_for_subscriber(cloner, &cached));
                cell.give_back(cached);
                drop_guarded(cell, "a finished task");
                *self.rx.lock() = Some(rx);
            })),
            Some(Answer::Gone) | None => Subscribed::Gone,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Admits `tasks` (one, or a graph's) in one critical section, then copies
/// lent parent outcomes and lets the children that waited for them go.
pub(crate) fn admit(cluster: &Cluster, tasks: Vec<NewTask>) -> Result<(), SubmitError> {
    let shared = cluster.shared();
    let mut core = shared.lock();
    let unstarted = core.phase == crate::engine::Phase::Idle;
    let admitted = tasks
        .iter()
        .try_for_each(|t| core.check_limiters(t.job.as_ref()))
        .and_then(|()| core.submit_group(&tasks));
    shared.unlock(core);
    let admitted = admitted?;
    drop(tasks);
    for old in admitted.replaced {
        old.release();
    }
    if !admitted.later.is_empty() {
        let mut ready = Vec::with_capacity(admitted.later.len());
        for (slot, seq, copy) in admitted.later {
            copy();
            ready.push((slot, seq));
        }
        let mut core = shared.lock();
        core.copied(&ready);
        shared.unlock(core);
    }
    if unstarted {
        cluster.watch_unstarted();
    }
    Ok(())
}

static NEXT_GRAPH: AtomicU64 = AtomicU64::new(1);

/// A node of a [`Graph`]: an edge target for later nodes
/// (`.after(&node)`), and the key to its handle after
/// [`Graph::submit`] ([`GraphHandles::take`]).
pub struct Node<T, E> {
    graph: u64,
    index: usize,
    /// The user's id, if it gave one.
    id: Option<TaskId>,
    _types: PhantomData<fn() -> (T, E)>,
}

impl<T, E> fmt::Debug for Node<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("index", &self.index)
            .field("id", &self.id)
            .finish()
    }
}

/// Many tasks and the edges between them, submitted at once: either every
/// task is admitted or none is (the first error is returned and nothing is
/// queued). Nodes refer to earlier nodes with `.after(&node)`, and to tasks
/// already in the cluster by id or handle.
///
/// ```
/// use corral::{Cluster, Graph};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let mut graph = Graph::new(&cluster);
/// let a = graph.add(cluster.task(|_| async { Ok::<u32, String>(2) }).id("a")).unwrap();
/// let b = graph.add(cluster.task(|_| async { Ok::<u32, String>(3) }).id("b")).unwrap();
/// let sum = graph
///     .add(
///         cluster
///             .task(|ctx| async move {
///                 let a = ctx.parent::<u32, String>("a").await.map_err(|e| e.to_string())?;
///                 let b = ctx.parent::<u32, String>("b").await.map_err(|e| e.to_string())?;
///                 Ok::<u32, String>(a + b)
///             })
///             .after(&a)
///             .after(&b),
///     )
///     .unwrap();
/// let mut handles = graph.submit().unwrap();
/// assert_eq!(handles.take(&sum).unwrap().await, Ok(5));
/// # }
/// ```
pub struct Graph<'c> {
    cluster: &'c Cluster,
    id: u64,
    tasks: Vec<NewTask>,
    /// Each node's `TaskHandle<T, E>`, boxed.
    handles: Vec<Box<dyn Any + Send>>,
}

impl fmt::Debug for Graph<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.tasks.len())
            .finish()
    }
}

impl<'c> Graph<'c> {
    /// An empty graph for `cluster`.
    pub fn new(cluster: &'c Cluster) -> Self {
        Graph {
            cluster,
            id: NEXT_GRAPH.fetch_add(1, Relaxed),
            tasks: Vec::new(),
            handles: Vec::new(),
        }
    }

    /// Adds a task (built by [`Cluster::task`] or [`Cluster::blocking_task`]
    /// of the same cluster). Its options are checked now; it is admitted
    /// with the others by [`submit`](Self::submit).
    ///
    /// # Errors
    /// What [`TaskBuilder::submit`](crate::TaskBuilder::submit) reports on
    /// the options, [`SubmitError::InvalidOption`] for an edge to a node of
    /// another graph, or a builder of another cluster.
    pub fn add<B, T, E>(
        &mut self,
        builder: crate::TaskBuilder<'_, B, T, E>,
    ) -> Result<Node<T, E>, SubmitError>
    where
        B: crate::body::Body<T, E>,
        T: Send + 'static,
        E: Send + 'static,
    {
        if !Arc::ptr_eq(builder.cluster().shared(), self.cluster.shared()) {
            return Err(SubmitError::InvalidOption {
                option: "Graph::add",
                reason: "the task was built for another cluster",
            });
        }
        let (cell, task) = builder.prepare()?;
        let index = self.tasks.len();
        for after in task.job.parents() {
            if let Target::Node { graph, index: i } = after.target {
                if graph != self.id || i >= index {
                    return Err(SubmitError::InvalidOption {
                        option: "after",
                        reason: "a graph node can only follow an earlier node of its own graph",
                    });
                }
            }
        }
        let id = task.job.name().map(|n| TaskId::named(n.clone()));
        self.tasks.push(task);
        self.handles.push(Box::new(TaskHandle::<T, E>::new(cell)));
        Ok(Node {
            graph: self.id,
            index,
            id,
            _types: PhantomData,
        })
    }

    /// Admits every node at once (see the type docs).
    ///
    /// # Errors
    /// The first [`SubmitError`] of any node; nothing is then admitted, and
    /// every node's body is dropped without running.
    pub fn submit(self) -> Result<GraphHandles, SubmitError> {
        let Graph {
            cluster,
            id: self_id,
            tasks,
            handles,
        } = self;
        match admit(cluster, tasks) {
            Ok(()) => Ok(GraphHandles {
                graph: self_id,
                handles: handles.into_iter().map(Some).collect(),
            }),
            Err(e) => {
                // Never admitted: the handles would never resolve, so they
                // go (each marks its cell's outcome unread).
                drop(handles);
                Err(e)
            }
        }
    }
}

/// The handles of a submitted [`Graph`], taken out by node.
pub struct GraphHandles {
    graph: u64,
    handles: Vec<Option<Box<dyn Any + Send>>>,
}

impl fmt::Debug for GraphHandles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphHandles")
            .field("left", &self.handles.iter().flatten().count())
            .finish()
    }
}

impl GraphHandles {
    /// The handle of `node`; `None` if it was taken already or `node`
    /// belongs to another graph.
    pub fn take<T: 'static, E: 'static>(&mut self, node: &Node<T, E>) -> Option<TaskHandle<T, E>> {
        if node.graph != self.graph {
            return None;
        }
        let slot = self.handles.get_mut(node.index)?;
        match slot.take()?.downcast::<TaskHandle<T, E>>() {
            Ok(h) => Some(*h),
            Err(other) => {
                *slot = Some(other);
                None
            }
        }
    }
}
