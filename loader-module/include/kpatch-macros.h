/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Patch-author macros for ksplice updates, with the names kpatch's
 * patch-author header uses so that patches written for kpatch build
 * unchanged.  Written from Documentation/livepatch/callbacks.rst.
 *
 * A callback macro records a pointer to the author's function in a section
 * named ".ksplice.callbacks.<kind>".  The differ keeps those sections (and the
 * functions they point to) as new; the module generator
 * (builder/src/module/) reads them from each patch object and chains the
 * functions behind the update's own klp_object callbacks, after run-pre
 * matching, for the kernel object (vmlinux or module) that object patches.
 */
#ifndef _KSPLICE_KPATCH_MACROS_H
#define _KSPLICE_KPATCH_MACROS_H

#include <linux/compiler.h>
#include <linux/jiffies.h>
#include <linux/livepatch.h>
#include <linux/printk.h>

/*
 * kpatch names the callback argument type patch_object; livepatch's own type
 * is struct klp_object.  A macro instead of a typedef keeps both spellings
 * the same type.
 */
#define patch_object struct klp_object

/* Section names; builder/src/module/callbacks.rs must use the same. */
#define KSPLICE_CALLBACKS_PRE_PATCH	".ksplice.callbacks.pre_patch"
#define KSPLICE_CALLBACKS_POST_PATCH	".ksplice.callbacks.post_patch"
#define KSPLICE_CALLBACKS_PRE_UNPATCH	".ksplice.callbacks.pre_unpatch"
#define KSPLICE_CALLBACKS_POST_UNPATCH	".ksplice.callbacks.post_unpatch"

/*
 * KPATCH_PRE_PATCH_CALLBACK - run @_fn before the object is patched
 *
 * @_fn: int (*)(struct klp_object *); a non-zero return refuses the update
 *       (or, for a module loaded later, refuses that module).
 */
#define KPATCH_PRE_PATCH_CALLBACK(_fn)					\
	static int (*__ksplice_pre_patch_##_fn)(struct klp_object *obj)	\
	__used __section(KSPLICE_CALLBACKS_PRE_PATCH) = _fn

/* KPATCH_POST_PATCH_CALLBACK - run @_fn once every task runs the new code */
#define KPATCH_POST_PATCH_CALLBACK(_fn)					\
	static void (*__ksplice_post_patch_##_fn)(struct klp_object *obj) \
	__used __section(KSPLICE_CALLBACKS_POST_PATCH) = _fn

/* KPATCH_PRE_UNPATCH_CALLBACK - run @_fn before the object is reverted */
#define KPATCH_PRE_UNPATCH_CALLBACK(_fn)				\
	static void (*__ksplice_pre_unpatch_##_fn)(struct klp_object *obj) \
	__used __section(KSPLICE_CALLBACKS_PRE_UNPATCH) = _fn

/* KPATCH_POST_UNPATCH_CALLBACK - run @_fn once no task runs the new code */
#define KPATCH_POST_UNPATCH_CALLBACK(_fn)				\
	static void (*__ksplice_post_unpatch_##_fn)(struct klp_object *obj) \
	__used __section(KSPLICE_CALLBACKS_POST_UNPATCH) = _fn

/*
 * KPATCH_PRINTK - printk without making the surrounding code cold
 *
 * printk() is declared __cold, so gcc may move a path that calls it into
 * .text.unlikely or stop inlining its callees, which turns a one-line debug
 * message into a large, surprising binary change.  Hiding the call behind a
 * condition the compiler cannot evaluate (jiffies is volatile) keeps the
 * cold attribute on that branch only.  It calls _printk(), which printk()
 * wraps, so that no .printk_index entry is added to the patched object.
 */
#define KPATCH_PRINTK(_fmt, ...)					\
({									\
	if (jiffies)							\
		_printk(_fmt, ##__VA_ARGS__);				\
})

#endif /* _KSPLICE_KPATCH_MACROS_H */
