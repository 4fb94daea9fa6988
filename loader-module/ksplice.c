// SPDX-License-Identifier: GPL-2.0
/*
 * The template every ksplice update module is built from.
 *
 * It registers one livepatch (Documentation/livepatch/livepatch.rst) whose
 * objects and functions the builder generates into ksplice_update.c.  A
 * stand-alone update stacks (replace = false): it only adds its own
 * functions.  A cumulative (stream) update sets replace = true
 * (ksplice_replace, generated): once its transition completes the livepatch
 * core disables and frees every other livepatch, and functions that only
 * those patched return to the original code
 * (Documentation/livepatch/cumulative-patches.rst).
 *
 * Before an object is patched, its pre_patch callback does run-pre matching:
 * the live code of every function being replaced must equal the code of the
 * pre build the update was made from, outside the byte ranges that
 * legitimately differ.  The livepatch core resolves func->old_func and
 * func->old_size (klp_init_object_loaded()) before it runs pre_patch
 * callbacks (__klp_enable_patch() and klp_module_coming()), so the callback
 * sees the addresses the patch would redirect.  The bytes are compared
 * outside the skip ranges; relocation fields are then checked by value: the
 * symbol a field refers to must be the one the pre build referred to, whose
 * address the livepatch core (klp_apply_section_relocs(), for vmlinux when
 * the update loads, for a module before that module's pre_patch callback)
 * or the module loader (exported symbols) wrote into the object's slots
 * beforehand.  A mismatch means the update
 * was not built for this kernel: the callback logs one line and returns
 * -EINVAL, so loading the update (or, for a module patched later, loading
 * that module) fails and nothing changes.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/errno.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/string.h>

#include "ksplice.h"

/*
 * kallsyms reports a function's size as the distance to the next symbol, so
 * func->old_size also counts the alignment padding after the code.  Padding
 * never reaches the next 64-byte boundary in kernels built with gcc's
 * default 16-byte function alignment, nor in those with a larger
 * CONFIG_FUNCTION_ALIGNMENT up to 64 bytes.
 */
#define KSPLICE_MAX_PADDING	64

static const struct ksplice_object *ksplice_object_of(struct klp_object *obj)
{
	/*
	 * With replace = true the core adds dynamic objects (no-op functions
	 * for what older patches changed); they get no callbacks from
	 * ksplice_init(), so only the static objects reach this lookup.
	 */
	if (obj < ksplice_klp_objects ||
	    obj >= ksplice_klp_objects + ksplice_nr_objects)
		return NULL;
	return &ksplice_objects[obj - ksplice_klp_objects];
}

static bool ksplice_skipped(const struct ksplice_run_pre *rp, u32 off)
{
	u32 i;

	for (i = 0; i < rp->nr_skip; i++) {
		if (off >= rp->skip[i].offset &&
		    off - rp->skip[i].offset < rp->skip[i].len)
			return true;
	}
	return false;
}

/*
 * The symbol address the live field at @p implies, given the relocation's
 * kind and addend: the S for which the pre build's relocation would have
 * written exactly these bytes.  Comparing it with the slot checks the field
 * equals S + A - P (or S + A) including the range of its truncation.
 */
static unsigned long ksplice_live_target(const u8 *p,
					 const struct ksplice_reloc *r)
{
	s32 s32v;
	u32 u32v;
	u64 u64v;

	switch (r->kind) {
	case KSPLICE_RELOC_PC32:
		memcpy(&s32v, p, sizeof(s32v));
		return (unsigned long)p + (long)s32v - (unsigned long)r->addend;
	case KSPLICE_RELOC_32S:
		memcpy(&s32v, p, sizeof(s32v));
		return (unsigned long)(long)s32v - (unsigned long)r->addend;
	case KSPLICE_RELOC_32:
		memcpy(&u32v, p, sizeof(u32v));
		return (unsigned long)u32v - (unsigned long)r->addend;
	default:
		memcpy(&u64v, p, sizeof(u64v));
		return (unsigned long)u64v - (unsigned long)r->addend;
	}
}

static int ksplice_match_relocs(struct klp_func *func,
				const struct ksplice_run_pre *rp,
				const struct ksplice_object *kobj)
{
	const u8 *live = func->old_func;
	const struct ksplice_reloc *r;
	unsigned long found;
	u32 i;

	for (i = 0; i < rp->nr_relocs; i++) {
		r = &rp->relocs[i];
		if (r->slot >= kobj->nr_slots || r->kind > KSPLICE_RELOC_64 ||
		    r->offset > rp->size ||
		    rp->size - r->offset < (r->kind == KSPLICE_RELOC_64 ? 8 : 4)) {
			pr_err("run-pre: bad relocation %u of %s\n", i,
			       func->old_name);
			return -EINVAL;
		}
		found = ksplice_live_target(live + r->offset, r);
		if (found == READ_ONCE(kobj->slots[r->slot]))
			continue;
		pr_err("run-pre: relocation mismatch in %s+0x%x: expected %s found %pS\n",
		       func->old_name, r->offset, kobj->slot_names[r->slot],
		       (void *)found);
		return -EINVAL;
	}
	return 0;
}

static int ksplice_match_func(struct klp_func *func,
			      const struct ksplice_run_pre *rp,
			      const struct ksplice_object *kobj)
{
	const u8 *live = func->old_func;
	u32 off;

	if (func->old_size < rp->size ||
	    func->old_size - rp->size >= KSPLICE_MAX_PADDING) {
		pr_err("run-pre: size mismatch in %s: expected %u found %lu\n",
		       func->old_name, rp->size, func->old_size);
		return -EINVAL;
	}

	for (off = 0; off < rp->size; off++) {
		if (live[off] == rp->code[off] || ksplice_skipped(rp, off))
			continue;
		pr_err("run-pre: mismatch in %s+0x%x: expected %02x found %02x\n",
		       func->old_name, off, rp->code[off], live[off]);
		return -EINVAL;
	}
	return ksplice_match_relocs(func, rp, kobj);
}

static int ksplice_run_pre(struct klp_object *obj,
			   const struct ksplice_object *kobj)
{
	unsigned int i;
	int ret;

	for (i = 0; i < kobj->nr_funcs; i++) {
		ret = ksplice_match_func(&obj->funcs[i], &kobj->run_pre[i],
					 kobj);
		if (ret)
			return ret;
	}
	return 0;
}

static int ksplice_run_pre_hooks(int (*const *fn)(struct klp_object *obj),
				 struct klp_object *obj)
{
	int ret;

	for (; fn && *fn; fn++) {
		ret = (*fn)(obj);
		if (ret)
			return ret;
	}
	return 0;
}

static int ksplice_pre_patch(struct klp_object *obj)
{
	const struct ksplice_object *kobj = ksplice_object_of(obj);
	int ret;

	if (!kobj) {
		pr_err("run-pre: unknown object %s\n",
		       obj->name ? obj->name : "vmlinux");
		return -EINVAL;
	}

	ret = ksplice_run_pre(obj, kobj);
	if (ret)
		return ret;

	/* The author's callbacks only run once the code is known to match. */
	return ksplice_run_pre_hooks(kobj->hooks.pre_patch, obj);
}

static void ksplice_run_hooks(void (*const *fn)(struct klp_object *obj),
			      struct klp_object *obj)
{
	for (; fn && *fn; fn++)
		(*fn)(obj);
}

static void ksplice_post_patch(struct klp_object *obj)
{
	const struct ksplice_object *kobj = ksplice_object_of(obj);

	if (kobj)
		ksplice_run_hooks(kobj->hooks.post_patch, obj);
}

static void ksplice_pre_unpatch(struct klp_object *obj)
{
	const struct ksplice_object *kobj = ksplice_object_of(obj);

	if (kobj)
		ksplice_run_hooks(kobj->hooks.pre_unpatch, obj);
}

static void ksplice_post_unpatch(struct klp_object *obj)
{
	const struct ksplice_object *kobj = ksplice_object_of(obj);

	if (kobj)
		ksplice_run_hooks(kobj->hooks.post_unpatch, obj);
}

static struct klp_patch ksplice_patch = {
	.mod = THIS_MODULE,
	.objs = ksplice_klp_objects,
};

static int __init ksplice_init(void)
{
	struct klp_object *obj;

	/* Every object gets run-pre matching, whether or not it has hooks. */
	for (obj = ksplice_klp_objects; obj->funcs; obj++) {
		obj->callbacks.pre_patch = ksplice_pre_patch;
		obj->callbacks.post_patch = ksplice_post_patch;
		obj->callbacks.pre_unpatch = ksplice_pre_unpatch;
		obj->callbacks.post_unpatch = ksplice_post_unpatch;
	}
	ksplice_patch.replace = ksplice_replace;
	return klp_enable_patch(&ksplice_patch);
}

static void __exit ksplice_exit(void)
{
}

module_init(ksplice_init);
module_exit(ksplice_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ksplice live update");
MODULE_INFO(livepatch, "Y");
