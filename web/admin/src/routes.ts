// Links inside the page: the part after `#` names the view and the
// enrollment's ids (never the token).

export function enrollmentHash(userId: string, courseId?: string): string {
  const user = `#/enrollments/${encodeURIComponent(userId)}`;
  return courseId === undefined ? user : `${user}/${encodeURIComponent(courseId)}`;
}
